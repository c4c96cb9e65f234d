"""Entry file for `mitmdump -s lakera_addon/addon.py` (also mitmweb and mitmproxy).

mitmproxy imports this file as a script with its folder first on sys.path, so it uses absolute
imports only and the package must be installed in mitmproxy's Python (`pip install -e .`).
"""

from lakera_addon.guard_addon import LakeraGuard

addons = [LakeraGuard()]
