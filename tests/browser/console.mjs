// The audit console (/console) in a real browser, JavaScript off: an auditor signs in
// through the realm's login and consent pages, filters, opens an event, exports and
// checks the chain; a patient reads who accessed her record and cannot open another
// account's events. Usage: node console.mjs BASE_URL OTHER_ACCOUNT_URN SCREENSHOT_DIR
import { check, inBrowser } from './chromium.mjs';

const [base, otherAccount, shots] = process.argv.slice(2);
const password = 'correct horse battery staple';

async function signIn(page, role, username) {
  await page.goto(`${base}/console`);
  check((await page.title()).startsWith('Audit console'), 'the console starts at its sign-in choice');
  const link = role === 'auditor' ? 'a[href="/console/login?as=auditor"]' : 'a[href="/console/login?as=patient"]';
  await Promise.all([page.waitForNavigation(), page.click(link)]);
  check((await page.title()).startsWith('Log in'), `${username}: the realm's login page`);
  await page.type('#username', username);
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check((await page.title()).startsWith('Allow access'), `${username}: the consent page`);
  await Promise.all([page.waitForNavigation(), page.click('button[value=allow]')]);
  check(new URL(page.url()).pathname === '/console/events', `${username}: signed in to the events page`);
}

const otherIds = [];
await inBrowser(async (page) => {
  await page.goto(`${base}/console`);
  await page.screenshot({ path: `${shots}/console-start.png` });
  await signIn(page, 'auditor', 'audrey');
  check((await page.title()).startsWith('Audit events'), 'an auditor sees the audit events');
  await page.goto(`${base}/console`);
  check(new URL(page.url()).pathname === '/console/events', 'signed in, the console\'s address opens the events');
  await page.screenshot({ path: `${shots}/console-events.png`, fullPage: true });
  // The keyboard reaches the content first: the skip link is the first stop.
  await page.keyboard.press('Tab');
  check(await page.evaluate(() => document.activeElement.textContent) === 'Skip to the content',
    'the first Tab stop skips to the content');
  await page.type('#subtype', 'create');
  await Promise.all([page.waitForNavigation(), page.click('.filters button[type=submit]')]);
  const rows = await page.$$eval('tbody tr', (trs) => trs.map((tr) => tr.textContent));
  check(rows.length === 6 && rows.every((r) => r.includes('create')), `the subtype filter keeps the 6 creations (${rows.length})`);
  await Promise.all([page.waitForNavigation(), page.click('tbody tr a')]);
  check((await page.title()).startsWith('Event '), 'an event opens');
  const pres = await page.$$eval('pre', (ps) => ps.map((p) => p.textContent));
  check(pres[0].includes('"resourceType": "AuditEvent"') && pres[1].includes('<AuditMessage'),
    'the event shows its FHIR AuditEvent and its DICOM message');
  await page.screenshot({ path: `${shots}/console-event.png`, fullPage: true });
  // Another account's events, as the auditor finds them.
  await page.goto(`${base}/console/events?patient=${encodeURIComponent(otherAccount)}`);
  for (const href of await page.$$eval('tbody tr a', (as) => as.map((a) => a.getAttribute('href')))) otherIds.push(href);
  // The loader's 3 writes, and the reads of the app the representative allowed (flow.mjs).
  check(otherIds.length >= 3, `the auditor finds the other account's events (${otherIds.length})`);
  await page.goto(`${base}/console/trail`);
  await Promise.all([page.waitForNavigation(), page.click('form[action="/console/trail/verify"] button')]);
  // The check runs in the background; the page reloads itself (no script) until it ends.
  for (let i = 0; i < 50 && await page.$('meta[http-equiv=refresh]'); i++) {
    await page.waitForNavigation({ timeout: 10000 });
  }
  check((await page.$eval('[role=status]', (e) => e.textContent)).includes('the chain is intact'),
    'the chain check runs from the page');
  await page.screenshot({ path: `${shots}/console-trail.png`, fullPage: true });
});

await inBrowser(async (page) => {
  await signIn(page, 'patient', 'anna');
  check((await page.title()).startsWith('Who accessed your record'), 'a patient sees her access log');
  const lines = await page.$$eval('.log li', (lis) => lis.map((li) => li.textContent.trim()));
  check(lines.filter((l) => l.startsWith('loader added your')).length === 3,
    `plain sentences about her record: ${lines.join(' | ')}`);
  await page.screenshot({ path: `${shots}/console-patient.png`, fullPage: true });
  for (const href of otherIds) {
    const response = await page.goto(`${base}${href}`);
    check(response.status() === 404, `another account's event ${href} is not hers to see`);
  }
  const exported = await page.goto(`${base}/console/export?format=csv`);
  check(exported.status() === 403, 'exports are for auditors');
});

await inBrowser(async (page) => {
  // A representative: one record at a time, the other one link away.
  await signIn(page, 'patient', 'rita');
  const record = async () => page.$eval('.record', (p) => p.textContent);
  const first = await record();
  await Promise.all([page.waitForNavigation(), page.click('.record a')]);
  check((await page.title()).startsWith('Allow access'), 'switching asks only whose record (no new login)');
  await page.click('#partition-2');
  await Promise.all([page.waitForNavigation(), page.click('button[value=allow]')]);
  check(new URL(page.url()).pathname === '/console/events', 'back on the events page');
  const second = await record();
  check(first !== second && second.includes('Switch record'), `the other record now: ${first} / ${second}`);
  const shown = await page.$$eval('tbody tr a, .log li a', (as) => as.map((a) => a.getAttribute('href')));
  check(shown.length > 0 && shown.every((href) => otherIds.includes(href)),
    'the events shown are the other account\'s');
});
console.log('console: passed');
