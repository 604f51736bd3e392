// Debian's Chromium, headless, playing the person at Tessera's pages for an app whose
// redirect URI is not a real server: the redirect back is caught and its URL returned.
import puppeteer from 'puppeteer-core';

function launch() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--ignore-certificate-errors'],
  });
}

export async function throughPages(url, redirectUri, steps, { javascript = true } = {}) {
  const browser = await launch();
  let redirected = null;
  try {
    const page = await browser.newPage();
    await page.setJavaScriptEnabled(javascript);
    await page.setRequestInterception(true);
    page.on('request', (req) => {
      if (req.url().startsWith(redirectUri)) {
        redirected = req.url();
        req.respond({ status: 200, contentType: 'text/html', body: '<p>app</p>' });
      } else {
        req.continue();
      }
    });
    await page.goto(url);
    await steps(page);
  } finally {
    await browser.close();
  }
  return redirected;
}

export function check(condition, message) {
  if (!condition) { console.error(`FAILED: ${message}`); process.exit(1); }
  console.log(`ok: ${message}`);
}

// A fresh headless Chromium for `steps(page)`; JavaScript off unless asked for.
export async function inBrowser(steps, { javascript = false } = {}) {
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.setJavaScriptEnabled(javascript);
    await page.setViewport({ width: 1200, height: 900 });
    await steps(page);
  } finally {
    await browser.close();
  }
}
