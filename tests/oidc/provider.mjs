// An OpenID Provider for the auth service's tests: `oidc-provider` (an
// OpenID Certified implementation, installed by .ci/tools) with one
// confidential client and its development login form, where any login
// and password sign in. The account's email is the login (or
// `<login>@example.com`); logins starting with `unverified` have an
// unverified email.
//
//   node tests/oidc/provider.mjs PORT REDIRECT_URI
//
// OIDC_PROVIDER_DIR names the folder npm installed oidc-provider in.
import { generateKeyPairSync } from 'node:crypto';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [port, redirectUri] = process.argv.slice(2);
if (!port || !redirectUri) {
  console.error('usage: provider.mjs PORT REDIRECT_URI');
  process.exit(2);
}
const dir = process.env.OIDC_PROVIDER_DIR;
const entry = path.join(dir, 'node_modules/oidc-provider/lib/index.js');
const { default: Provider } = await import(pathToFileURL(entry).href);

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'tributary',
    client_secret: 'tributary-test-secret',
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  jwks: { keys: [signingKey] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['tributary-test-cookie-key'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: id.includes('@') ? id : `${id}@example.com`,
          email_verified: !id.startsWith('unverified'),
        };
      },
    };
  },
});
provider.listen(Number(port), '127.0.0.1', () => {
  console.error(`oidc-provider listening on ${issuer}`);
});
