// Opens a mitmweb page in headless Chromium (Debian's, through playwright-core: no browser
// download), waits until `expected` is on the page, saves a screenshot and prints the page's
// text as one JSON line: {"text": ...}.
//   node show.mjs URL EXPECTED SCREENSHOT.png PROFILE_DIR [CHROMIUM]
import { chromium } from "playwright-core";

const [url, expected, screenshot, profile, executable] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(profile, {
  executablePath: executable || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] ?? (await context.newPage());
  await page.goto(url, { waitUntil: "domcontentloaded", timeout: 60_000 });
  await page.getByText(expected).first().waitFor({ timeout: 60_000 });
  await page.waitForTimeout(300); // the last paint of the content view
  await page.screenshot({ path: screenshot });
  const text = await page.locator("body").innerText();
  console.log(JSON.stringify({ text }));
} finally {
  await context.close();
}
