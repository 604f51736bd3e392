// A real OpenID Connect / OAuth client library (openid-client 6, by the author of node
// oidc-provider) completes the SMART standalone launch against Tessera: discovery,
// authorization code with PKCE (the browser part in headless Chromium), the id_token
// checked by the library (RS256, iss, aud, nonce, RFC 9207 iss), UserInfo, and a
// refresh. Usage: NODE_EXTRA_CA_CERTS=pki/ca.crt node library.mjs BASE_URL
import * as oidc from 'openid-client';
import { check, throughPages } from './chromium.mjs';

const [base] = process.argv.slice(2);
const redirectUri = 'https://app.example/cb';

const config = await oidc.discovery(new URL(`${base}/realms/cara`), 'library-app', undefined, oidc.None());
check(config.serverMetadata().authorization_endpoint.endsWith('/protocol/openid-connect/auth'),
  'discovery found the authorization endpoint');

const verifier = oidc.randomPKCECodeVerifier();
const state = oidc.randomState();
const nonce = oidc.randomNonce();
const url = oidc.buildAuthorizationUrl(config, {
  redirect_uri: redirectUri,
  scope: 'openid fhirUser launch/patient offline_access patient/Observation.rs',
  code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  state,
  nonce,
  aud: `${base}/fhir`,
});

const redirected = await throughPages(url.href, redirectUri, async (page) => {
  await page.type('#username', 'anna');
  await page.type('#password', 'correct horse battery staple');
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await Promise.all([page.waitForNavigation(), page.click('button[value=allow]')]);
});
check(redirected !== null, 'the browser came back to the app');

const tokens = await oidc.authorizationCodeGrant(config, new URL(redirected), {
  pkceCodeVerifier: verifier,
  expectedState: state,
  expectedNonce: nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
check(claims.fhirUser === `${base}/fhir/pa/Patient/anna`, `id_token verified by the library, fhirUser ${claims.fhirUser}`);
check(typeof tokens.patient === 'string', 'SMART launch context: patient');
const info = await oidc.fetchUserInfo(config, tokens.access_token, claims.sub);
check(info.fhirUser === claims.fhirUser, 'UserInfo agrees with the id_token');

const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
check(refreshed.access_token !== tokens.access_token && refreshed.refresh_token !== tokens.refresh_token,
  'refresh gives a new access token and a rotated refresh token');
const response = await oidc.fetchProtectedResource(config, refreshed.access_token,
  new URL(`${base}/fhir/pa/Observation`), 'GET');
check(response.status === 200, 'the refreshed token reads the granted Observations');
let replay = null;
try {
  await oidc.refreshTokenGrant(config, tokens.refresh_token);
} catch (e) {
  replay = e;
}
check(replay && replay.error === 'invalid_grant', 'the rotated refresh token is refused (invalid_grant)');
console.log('openid-client flow: passed');
