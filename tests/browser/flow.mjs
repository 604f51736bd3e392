// A person in a real browser (Debian's Chromium, headless): a representative logs in,
// unticks one scope on the consent page, picks a patient, and the app (this script,
// playing a public SMART app) exchanges the code with PKCE and reads only what was
// granted. Usage: node flow.mjs BASE_URL CA_FILE SCREENSHOT_DIR
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { check, throughPages } from './chromium.mjs';

const [base, caFile, shots] = process.argv.slice(2);
const ca = readFileSync(caFile);
const redirectUri = 'https://app.example/cb';
const b64url = (buf) => buf.toString('base64url');
const verifier = b64url(randomBytes(32));
const challenge = b64url(createHash('sha256').update(verifier).digest());
const state = b64url(randomBytes(12));

function request(method, url, { form, token } = {}) {
  return new Promise((resolve, reject) => {
    const body = form ? new URLSearchParams(form).toString() : undefined;
    const headers = {};
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
    if (token) headers.authorization = `Bearer ${token}`;
    const req = https.request(url, { method, ca, headers }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

const authorize = new URL(`${base}/realms/cara/protocol/openid-connect/auth`);
for (const [k, v] of Object.entries({
  response_type: 'code', client_id: 'browser-app', redirect_uri: redirectUri,
  scope: 'openid launch/patient patient/Patient.rs patient/Observation.rs',
  state, code_challenge: challenge, code_challenge_method: 'S256', aud: `${base}/fhir`,
})) authorize.searchParams.set(k, v);

// JavaScript off: the pages must work without it.
const redirected = await throughPages(authorize.href, redirectUri, async (page) => {
  check((await page.title()).startsWith('Log in'), 'the authorization request shows the login page');
  await page.screenshot({ path: `${shots}/login.png` });
  await page.type('#username', 'rita');
  await page.type('#password', 'wrong password!');
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check((await page.$eval('#login-error', (e) => e.textContent)).includes('Wrong username or password'),
    'a wrong password says so');
  await page.type('#password', 'correct horse battery staple');
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  check((await page.title()).startsWith('Allow access'), 'after login: the consent page');
  // Untick Patient.rs, narrow Observations to laboratory, pick the second patient.
  await page.click('input[value="patient/Patient.rs"]');
  await page.select('select[name="narrow:patient/Observation.rs"]', 'laboratory');
  await page.click('#partition-2');
  await page.screenshot({ path: `${shots}/consent.png`, fullPage: true });
  await Promise.all([page.waitForNavigation(), page.click('button[value=allow]')]);
}, { javascript: false });

check(redirected !== null, 'the browser was sent back to the app');
const back = new URL(redirected);
check(back.searchParams.get('state') === state, 'state came back exactly');
const tokenResponse = await request('POST', `${base}/realms/cara/protocol/openid-connect/token`, {
  form: {
    grant_type: 'authorization_code', code: back.searchParams.get('code'),
    redirect_uri: redirectUri, client_id: 'browser-app', code_verifier: verifier,
  },
});
check(tokenResponse.status === 200, tokenResponse.status === 200 ? "code exchanged" : `code exchange refused: ${tokenResponse.text}`);
const token = JSON.parse(tokenResponse.text);
check(token.scope === 'launch/patient openid patient/Observation.rs?category=laboratory',
  `granted what was ticked: ${token.scope}`);
check(typeof token.patient === 'string', `launch context patient ${token.patient}`);
const partition = JSON.parse(Buffer.from(token.access_token.split('.')[1], 'base64url')).partitions[0];
check(partition === 'pb', 'the token is for the patient picked');
const labs = await request('GET', `${base}/fhir/pb/Observation`, { token: token.access_token });
check(labs.status === 200 && JSON.parse(labs.text).total === 1, 'the app reads the laboratory result only');
const patient = await request('GET', `${base}/fhir/pb/Patient/${token.patient}`, { token: token.access_token });
check(patient.status === 403, 'the unticked Patient scope is refused');
const other = await request('GET', `${base}/fhir/pa/Observation`, { token: token.access_token });
check(other.status === 401, 'the other patient\'s record is refused');
console.log('browser flow: passed');
