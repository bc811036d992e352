/**
 * `source:` and `plex:` in the config, and where the token comes from: config, token file, PLEX_TOKEN,
 * Plex's Preferences.xml beside its Logs folder. Bad values get one clear error, never echoing a token.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { plexServers, validateConfig } from '../daemon/config.js';
import { planSources } from '../daemon/sources/plan.js';
import { findPlexToken, redactToken } from '../daemon/sources/plex-token.js';
import { SECRET_TOKEN } from './helpers/plex.js';

const base = { device: 'eth0', server: { rate: '20mbit' }, client: { rate: '4mbit' } };

function plexHome(t: { teardown(fn: () => unknown): void }): { log: string; preferences: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-plexhome-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const data = join(dir, 'Plex Media Server');
  mkdirSync(join(data, 'Logs'), { recursive: true });
  const log = join(data, 'Logs', 'Plex Media Server.log');
  writeFileSync(log, '');
  return { log, preferences: join(data, 'Preferences.xml'), dir };
}

t.test('defaults: source auto, one local server, TLS verified, a 30 s poll; a list of servers', async (t) => {
  const config = validateConfig(base);
  t.equal(config.source, 'auto');
  t.same(plexServers(config), [{ url: 'http://127.0.0.1:32400', verifyTls: true, pollSeconds: 30 }]);
  const two = validateConfig({
    ...base,
    source: 'plex',
    plex: [
      { url: 'https://10.0.0.2:32400', token: 'a', verifyTls: false },
      { url: 'http://10.0.0.3:32400', tokenFile: '/etc/t', pollSeconds: 0 },
    ],
  });
  t.equal(plexServers(two).length, 2);
  t.equal(plexServers(two)[1]!.pollSeconds, 0);
});

t.test('bad plex settings: one message naming the key, the token never echoed', async (t) => {
  const refused = (input: object) => {
    try {
      validateConfig({ ...base, ...input });
    } catch (error) {
      return (error as Error).message;
    }
    return 'accepted';
  };
  t.match(refused({ source: 'api' }), /'source' = "api": .*auto.*log.*plex.*both/);
  t.match(refused({ plex: { url: 'plex.local:32400' } }), /'plex.url' = "plex.local:32400": expected an http:\/\/ or https:\/\/ URL/);
  t.match(refused({ plex: { url: 'ftp://x' } }), /'plex.url'.*http/);
  const inUrl = refused({ plex: { url: `http://10.0.0.2:32400/?X-Plex-Token=${SECRET_TOKEN}` } });
  t.match(inUrl, /must carry no query/);
  const both = refused({ plex: { url: 'http://10.0.0.2:32400', token: SECRET_TOKEN, tokenFile: '/etc/t' } });
  t.match(both, /set plex.token or plex.tokenFile, not both/);
  const badType = refused({ plex: { token: SECRET_TOKEN, verifyTls: 'no' } });
  t.match(badType, /'plex.verifyTls' = "no"/);
  t.match(refused({ plex: { token: '' } }), /'plex.token' = <token>/);
  t.match(refused({ plex: { pollSeconds: -1 } }), /'plex.pollSeconds' = -1/);
  t.match(refused({ plex: { port: 32400 } }), /unknown key 'plex.port'/);
  for (const message of [both, badType]) t.notOk(message.includes(SECRET_TOKEN), `no token in: ${message}`);
  t.match(inUrl, /must carry no query/);
});

t.test('token sources in order: plex.token, plex.tokenFile, PLEX_TOKEN, Plex Preferences.xml', async (t) => {
  const home = plexHome(t);
  writeFileSync(
    home.preferences,
    `<?xml version="1.0" encoding="utf-8"?>\n<Preferences MachineIdentifier="abc" ProcessedMachineIdentifier="def" PlexOnlineToken="from-preferences" PlexOnlineUsername="remi"/>\n`,
  );
  const tokenFile = join(home.dir, 'plex-token');
  writeFileSync(tokenFile, 'from-file\n');
  const preferences = [home.preferences];
  t.same(findPlexToken({ token: 'inline' }, { env: { PLEX_TOKEN: 'env' }, preferences }).choice, { token: 'inline', source: 'plex.token' });
  t.same(findPlexToken({ tokenFile }, { env: { PLEX_TOKEN: 'env' }, preferences }).choice, { token: 'from-file', source: `plex.tokenFile ${tokenFile}` });
  t.same(findPlexToken({}, { env: { PLEX_TOKEN: 'env' }, preferences }).choice, { token: 'env', source: 'PLEX_TOKEN environment variable' });
  t.same(findPlexToken({}, { env: {}, preferences }).choice, { token: 'from-preferences', source: `PlexOnlineToken in ${home.preferences}` });
  t.throws(() => findPlexToken({ tokenFile: join(home.dir, 'nope') }, { env: {}, preferences }), /cannot read plex.tokenFile .*nope: no such file/);
  writeFileSync(tokenFile, '  \n');
  t.throws(() => findPlexToken({ tokenFile }, { env: {}, preferences }), /plex.tokenFile .* is empty/);
  writeFileSync(home.preferences, '<Preferences MachineIdentifier="abc"/>');
  t.match(findPlexToken({}, { env: {}, preferences }), { problems: [/has no PlexOnlineToken \(this Plex server is not signed in/] });
});

t.test(
  'Preferences.xml that shaperrd may not read: the check says why and what to do',
  { skip: process.getuid?.() === 0 ? false : 'needs root to run as nobody' },
  async (t) => {
    const home = plexHome(t);
    writeFileSync(home.preferences, '<Preferences PlexOnlineToken="x"/>');
    chmodSync(home.preferences, 0o600);
    chmodSync(home.dir, 0o755);
    // Root reads anything: ask as nobody, the way a hardened service runs.
    const { spawnSync } = await import('node:child_process');
    const script = `import { readPreferencesToken } from ${JSON.stringify(new URL('../dist/daemon/sources/plex-token.js', import.meta.url).href)}; console.log(JSON.stringify(readPreferencesToken(${JSON.stringify(home.preferences)})));`;
    const run = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
    });
    t.equal(run.status, 0, run.stderr);
    t.match(JSON.parse(run.stdout), { problem: /exists but uid 65534 cannot read it .*plex.tokenFile/ });
  },
);

t.test('source planning: auto picks the API only with a token; plex without one is refused, naming the server', async (t) => {
  const home = plexHome(t);
  const auto = validateConfig({ ...base, log: home.log });
  t.match(planSources(auto, home.log, {}), {
    usesLog: true,
    sources: [{ name: 'log', target: home.log }],
    reason: /source: auto → the log \(no Plex token for http:\/\/127.0.0.1:32400/,
  });
  t.match(planSources(auto, home.log, { PLEX_TOKEN: SECRET_TOKEN }), {
    usesLog: false,
    sources: [{ name: 'plex', target: 'http://127.0.0.1:32400', keySource: 'PLEX_TOKEN environment variable' }],
  });
  writeFileSync(home.preferences, `<Preferences PlexOnlineToken="${SECRET_TOKEN}"/>`);
  const fromPreferences = planSources(auto, home.log, {});
  t.match(
    fromPreferences,
    { usesLog: false, reason: /Plex API at http:\/\/127.0.0.1:32400 \(token from PlexOnlineToken in .*Preferences.xml\)/ },
    'on the Plex host no token needs copying',
  );
  t.notOk(fromPreferences.reason.includes(SECRET_TOKEN));
  rmSync(home.preferences);
  const plex = validateConfig({ ...base, source: 'plex', plex: { url: 'http://10.0.0.2:32400' } });
  t.throws(
    () => planSources(plex, home.log, {}),
    /no Plex token for http:\/\/10.0.0.2:32400: set plex.token or plex.tokenFile, or the PLEX_TOKEN environment variable/,
  );
  const both = validateConfig({ ...base, source: 'both', plex: { token: 'x' } });
  const bothPlan = planSources(both, home.log, {});
  t.match(bothPlan, { usesLog: true, sources: [{ name: 'log' }, { name: 'plex', keySource: 'plex.token' }] });
  t.equal(bothPlan.sources.length, 2, 'both: the log and the one server');
  const logOnly = planSources(validateConfig({ ...base, source: 'log', plex: { token: 'x' } }), home.log, {});
  t.same(
    logOnly.sources.map((source) => source.name),
    ['log'],
    'source: log runs the log alone',
  );
});

t.test('redaction covers the raw and the URL-encoded token', async (t) => {
  t.equal(redactToken('a tok/en+1 b tok%2Fen%2B1 c', 'tok/en+1'), 'a <token> b <token> c');
});
