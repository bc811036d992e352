/**
 * `jellyfin:` and `emby:` in the config, `source:` naming them or listing sources, where each API key comes
 * from (config, key file, JELLYFIN_API_KEY / EMBY_API_KEY), and `shaperr check`'s lines for each server
 * against the test server: accepted, rejected, pushing, push-less. Bad values get one clear error, never
 * echoing a key.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { exposedSecretsWarning, mediaServers, validateConfig } from '../daemon/config.js';
import { checkMediaServer } from '../daemon/sources/jellyfin-check.js';
import { checkSources, planSources, sourceSettings } from '../daemon/sources/plan.js';
import { SECRET_KEY, startJellyfinServer } from './helpers/jellyfin.js';

const base = { device: 'eth0', server: { rate: '20mbit' }, client: { rate: '4mbit' } };
const noEnv = {};

function tempDir(t: { teardown(fn: () => unknown): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'shaperr-jellyfin-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const refused = (input: object): string => {
  try {
    validateConfig({ ...base, ...input });
  } catch (error) {
    return (error as Error).message;
  }
  return 'accepted';
};

t.test('jellyfin: and emby: take one server or a list; defaults: port 8096, TLS verified, a 30 s safety poll', async (t) => {
  const one = validateConfig({ ...base, source: 'jellyfin', jellyfin: { apiKey: 'k' } });
  t.same(mediaServers(one, 'jellyfin'), [{ url: 'http://127.0.0.1:8096', apiKey: 'k', verifyTls: true, pollSeconds: 30 }]);
  const list = validateConfig({
    ...base,
    source: ['plex', 'emby'],
    emby: [
      { url: 'https://emby.lan:8920', apiKeyFile: '/etc/shaperr/emby-key', verifyTls: false },
      { url: 'http://10.0.0.9:8096', pollSeconds: 0 },
    ],
  });
  t.same(list.source, ['plex', 'emby']);
  t.equal(mediaServers(list, 'emby').length, 2);
  t.equal(mediaServers(list, 'emby')[1]!.pollSeconds, 0);
});

t.test('bad settings: one message naming the key, the key never echoed', async (t) => {
  t.match(refused({ source: 'kodi' }), /'source' = "kodi": .*jellyfin.*emby/);
  t.match(refused({ source: ['plex', 'both'] }), /'source.1' = "both"/);
  t.match(refused({ jellyfin: { url: 'jellyfin.lan:8096' } }), /'jellyfin.url' = "jellyfin.lan:8096": expected an http:\/\/ or https:\/\/ URL/);
  const inUrl = refused({ jellyfin: { url: `http://10.0.0.2:8096/?api_key=${SECRET_KEY}` } });
  t.match(inUrl, /must carry no query or credentials: put the key in jellyfin.apiKey or jellyfin.apiKeyFile/);
  t.match(refused({ emby: { apiKey: SECRET_KEY, apiKeyFile: '/etc/k' } }), /set emby.apiKey or emby.apiKeyFile, not both/);
  t.match(refused({ emby: { apiKey: SECRET_KEY, verifyTls: 'no' } }), /'emby.verifyTls' = "no"/);
  t.match(refused({ jellyfin: { apiKey: '' } }), /'jellyfin.apiKey' = <token>/);
  t.match(refused({ jellyfin: [{ apiKey: SECRET_KEY, pollSeconds: -1 }] }), /'jellyfin.0.pollSeconds'/);
  t.equal(
    refused({
      overrides: [
        { user: 'alice', rate: '2mbit' },
        { user: 'alice', source: 'jellyfn', rate: '8mbit' },
      ],
    }),
    `config: 'overrides.1.source' = "jellyfn": expected a media server: plex, jellyfin, emby`,
    'an override naming an unknown source: one error naming it',
  );
  t.same(validateConfig({ ...base, overrides: [{ user: 'alice', source: 'emby', rate: '8mbit' }] }).overrides, [{ user: 'alice', source: 'emby', rate: 8e6 }]);
  for (const message of [
    inUrl,
    refused({ emby: { apiKey: SECRET_KEY, apiKeyFile: '/etc/k' } }),
    refused({ jellyfin: [{ apiKey: SECRET_KEY, pollSeconds: -1 }] }),
  ])
    t.notOk(message.includes(SECRET_KEY), `no key in: ${message}`);
});

t.test('where the key comes from: the config, a key file, the environment variable; never the key in the plan', async (t) => {
  const dir = tempDir(t);
  const file = join(dir, 'jellyfin-key');
  writeFileSync(file, `${SECRET_KEY}\n`, { mode: 0o600 });
  const sourcesOf = (config: object, env: NodeJS.ProcessEnv = noEnv) => planSources(validateConfig({ ...base, ...config }), undefined, env);
  const fromConfig = sourcesOf({ source: 'jellyfin', jellyfin: { url: 'http://10.0.0.5:8096', apiKey: SECRET_KEY } });
  t.match(fromConfig, { usesLog: false, sources: [{ name: 'jellyfin', target: 'http://10.0.0.5:8096', keySource: 'jellyfin.apiKey' }] });
  t.match(fromConfig.reason, /^source: jellyfin → Jellyfin at http:\/\/10\.0\.0\.5:8096 \(key from jellyfin\.apiKey\)$/);
  t.match(sourcesOf({ source: 'jellyfin', jellyfin: { apiKeyFile: file } }).sources, [{ keySource: `apiKeyFile ${file}` }], 'the file, trimmed');
  t.match(sourcesOf({ source: 'emby' }, { EMBY_API_KEY: SECRET_KEY }).sources, [
    { name: 'emby', target: 'http://127.0.0.1:8096', keySource: 'the EMBY_API_KEY environment variable' },
  ]);
  t.throws(
    () => sourcesOf({ source: 'jellyfin' }),
    /no Jellyfin API key for http:\/\/127\.0\.0\.1:8096: set jellyfin\.apiKey or jellyfin\.apiKeyFile, or the JELLYFIN_API_KEY environment variable/,
  );
  t.throws(() => sourcesOf({ source: 'jellyfin', jellyfin: { apiKeyFile: join(dir, 'missing') } }), /cannot read jellyfin\.apiKeyFile .*missing: ENOENT/);
  writeFileSync(join(dir, 'empty'), '\n');
  t.throws(() => sourcesOf({ source: 'emby', emby: { apiKeyFile: join(dir, 'empty') } }), /emby\.apiKeyFile .*empty is empty/);
  for (const plan of [fromConfig, sourcesOf({ source: 'jellyfin', jellyfin: { apiKeyFile: file } })]) t.notOk(JSON.stringify(plan).includes(SECRET_KEY));

  const world = join(dir, 'shaperr.yaml');
  writeFileSync(world, 'x');
  chmodSync(world, 0o644);
  t.match(exposedSecretsWarning(world, validateConfig({ ...base, jellyfin: { apiKey: SECRET_KEY } })), /holds jellyfin\.apiKey/);
  t.equal(exposedSecretsWarning(world, validateConfig({ ...base, jellyfin: { apiKeyFile: file } })), undefined, 'a key file is not a secret in the config');
});

t.test('source: a list, both, auto: auto adds every Jellyfin and Emby server configured beside the Plex choice', async (t) => {
  const dir = tempDir(t);
  const log = join(dir, 'Plex Media Server.log');
  writeFileSync(log, '');
  const plan = (config: object, logPath?: string, env: NodeJS.ProcessEnv = noEnv) => planSources(validateConfig({ ...base, ...config }), logPath, env);
  const listed = plan({ source: ['log', 'plex', 'jellyfin'], plex: { token: 'p' }, jellyfin: { apiKey: 'j' } }, log);
  t.same(
    listed.sources.map((source) => source.name),
    ['log', 'plex', 'jellyfin'],
  );
  t.equal(listed.usesLog, true);
  t.match(listed.reason, /^source: \[log, plex, jellyfin\] → Plex API at .* and Jellyfin at .* and the log$/);
  t.same(
    plan({ source: 'both', plex: { token: 'p' }, jellyfin: { apiKey: 'j' } }, log).sources.map((source) => source.name),
    ['log', 'plex'],
    'both keeps meaning the log and Plex',
  );
  const everything = plan({ plex: { token: 'p' }, jellyfin: [{ apiKey: 'a' }, { url: 'http://10.0.0.7:8096', apiKey: 'b' }], emby: { apiKey: 'e' } }, log);
  t.same(
    everything.sources.map((source) => `${source.name} ${source.target}`),
    ['plex http://127.0.0.1:32400', 'jellyfin http://127.0.0.1:8096', 'jellyfin http://10.0.0.7:8096', 'emby http://127.0.0.1:8096'],
    'auto: the Plex API and every server configured',
  );
  t.same(
    plan({ jellyfin: { apiKey: 'a' } }, log).sources.map((source) => source.name),
    ['log', 'jellyfin'],
    'auto without a Plex token: the Plex log beside Jellyfin',
  );
  const jellyfinOnly = plan({ jellyfin: { apiKey: 'a' } });
  t.same(
    jellyfinOnly.sources.map((source) => source.name),
    ['jellyfin'],
  );
  t.equal(jellyfinOnly.usesLog, false, 'a Jellyfin-only host needs no Plex log');
  t.same(
    plan({}, log).sources.map((source) => source.name),
    ['log'],
    'auto with nothing else configured: as before',
  );
  t.throws(
    () => plan({ emby: { url: 'http://10.0.0.8:8096' } }, log),
    /no Emby API key for http:\/\/10\.0\.0\.8:8096/,
    'auto: a configured server without a key is an error, not skipped',
  );
  const settings = (config: object) => sourceSettings(validateConfig({ ...base, ...config }));
  t.not(settings({ jellyfin: { apiKey: 'a' } }), settings({ jellyfin: { apiKey: 'b' } }), 'a reload with a new Jellyfin key re-creates the sources');
  t.not(settings({ emby: { apiKey: 'a' } }), settings({ emby: { apiKey: 'a', url: 'http://10.0.0.8:8096' } }), 'and so does a new Emby URL');
});

t.test('shaperr check for each server: accepted and pushing; push-less; websocket refused; rejected key; unreachable', async (t) => {
  const jellyfin = await startJellyfinServer(t);
  jellyfin.play({ userName: 'alice', remoteEndPoint: '10.200.1.4' });
  jellyfin.addSession({ userName: 'bob' });
  const key = { token: SECRET_KEY, source: 'jellyfin.apiKey' };
  const good = await checkMediaServer({ kind: 'jellyfin', url: jellyfin.url, verifyTls: true, key }, 2000);
  t.match(good, [
    { verdict: 'ok', what: /^Jellyfin server "shaperr test server" 10\.10\.7 at .* accepts the API key \(from jellyfin\.apiKey\)$/ },
    { verdict: 'ok', what: /2 now, 1 playing \(users: alice, bob\)/ },
    { verdict: 'ok', what: /pushes sessions on its websocket \(\/socket\)/ },
  ]);
  const emby = await startJellyfinServer(t, { kind: 'emby' });
  emby.behaviour.push = false;
  const pushless = await checkMediaServer({ kind: 'emby', url: emby.url, verifyTls: true, key: { token: SECRET_KEY, source: 'emby.apiKey' } }, 500);
  t.match(pushless.at(-1), {
    verdict: 'warn',
    what: /^Emby pushed no Sessions message within 0\.5 s of SessionsStart: shaperrd will poll GET \/Sessions every 2 s/,
  });
  jellyfin.behaviour.refuseSockets = true;
  const proxied = await checkMediaServer({ kind: 'jellyfin', url: jellyfin.url, verifyTls: true, key }, 2000);
  t.match(proxied.at(-1), { verdict: 'warn', what: /websocket \/socket refused with HTTP 400: shaperrd will poll/, fix: /pass websocket upgrades/ });
  jellyfin.behaviour.refuseSockets = false;
  jellyfin.apiKey = 'rotated';
  const rejected = await checkMediaServer({ kind: 'jellyfin', url: jellyfin.url, verifyTls: true, key }, 2000);
  t.match(rejected, [{ verdict: 'fail', what: /^Jellyfin rejected the API key \(from jellyfin\.apiKey\)/, fix: /Dashboard → API Keys/ }]);
  await jellyfin.down();
  const down = await checkMediaServer({ kind: 'jellyfin', url: jellyfin.url, verifyTls: true, key }, 2000);
  t.match(down, [{ verdict: 'fail', what: /^Jellyfin at .* is not reachable: GET \/System\/Info: /, fix: /jellyfin\.url/ }]);
  t.notOk(JSON.stringify([good, pushless, proxied, rejected, down]).includes(SECRET_KEY), 'no key in any line');

  // Through the plan, as `shaperr check` runs it: the choice, then each server's lines.
  const config = validateConfig({ ...base, source: 'emby', emby: { url: emby.url, apiKey: SECRET_KEY } });
  const { lines, usesLog } = await checkSources(config, undefined, 500, { [`emby ${emby.url}`]: 'kept-by-shaperrd' });
  t.equal(usesLog, false);
  t.ok(emby.deviceIds.has('kept-by-shaperrd'), 'the check presents the DeviceId shaperrd keeps for the server (no new device)');
  t.match(lines[0], { verdict: 'ok', what: /^event source: emby → Emby at .* \(key from emby\.apiKey\)$/ });
  t.match(lines.slice(1), [{ verdict: 'ok' }, { verdict: 'ok' }, { verdict: 'warn' }]);
});
