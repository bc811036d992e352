/**
 * `client.rate: auto`: a pipe as wide as its streams need (Plex's Session.bandwidth, else the media
 * bitrate) × headroom, clamped to min/max, several streams on one address added up; every decision says
 * why. From the log, a transcode request's maxVideoBitrate is the need. The SessionTracker changes the class
 * in place when a stream's need moves, and only then.
 */
import t from 'tap';
import { policyConfig, validateConfig } from '../daemon/config.js';
import { PlexLogParser } from '../daemon/sources/parse.js';
import type { PlaybackEvent } from '../daemon/sources/source.js';
import { type Limits, Policy } from '../daemon/sessions/policy.js';
import { type Decision, SessionTracker } from '../daemon/sessions/sessions.js';

const MBIT = 1e6;
const base = { device: 'eth0', server: { rate: '50mbit' } };
const policyOf = (client: object, extra: object = {}) => new Policy(policyConfig(validateConfig({ ...base, client, ...extra })));

t.test('the rate is the need × headroom, clamped; ceil is max unless `auto`; overrides win', async (t) => {
  const policy = policyOf({ rate: 'auto', min: '1mbit', max: '20mbit' });
  const at = { address: '203.0.113.7' };
  t.match(policy.limitsFor({ ...at, streams: [{ bandwidth: 6 * MBIT, source: 'plex' }] }), {
    limits: { rate: 7.5 * MBIT, ceil: 20 * MBIT },
    why: 'auto: 6.00 Mbit/s Plex bandwidth × 1.25 = 7.50 Mbit/s',
  });
  t.equal(
    policy.limitsFor({ ...at, streams: [{ bandwidth: 6 * MBIT, source: 'jellyfin' }] }).why,
    'auto: 6.00 Mbit/s Jellyfin bandwidth × 1.25 = 7.50 Mbit/s',
    'the decision names the server the figure came from',
  );
  t.match(
    policy.limitsFor({ ...at, streams: [{ mediaBitrate: 4 * MBIT, directPlay: true }] }).limits,
    { rate: 8 * MBIT },
    'the media bitrate when Plex reserved nothing; direct play gets 2 (measured)',
  );
  t.match(
    policy.limitsFor({ ...at, streams: [{ bandwidth: 4 * MBIT }, { bandwidth: 2 * MBIT }] }).limits,
    { rate: 7.5 * MBIT },
    'two streams behind one address add up',
  );
  t.match(policy.limitsFor({ ...at, streams: [{ bandwidth: 40 * MBIT }] }), { limits: { rate: 20 * MBIT }, why: /clamped to max/ });
  t.match(policy.limitsFor({ ...at, streams: [{ bandwidth: 0.2 * MBIT }] }), { limits: { rate: 1 * MBIT }, why: /raised to min/ });
  t.match(policy.limitsFor({ ...at, streams: [] }), { limits: { rate: 20 * MBIT, ceil: 20 * MBIT }, why: 'auto: stream need unknown, max rate' });
  t.match(policy.limitsFor({ ...at, streams: [{ bandwidth: 3_333_333 }] }).limits, { rate: 4_170_000 }, 'rounded up to 10 kbit/s');
  t.same(
    policyOf({ rate: 'auto', ceil: 'auto' }).limitsFor({ ...at, streams: [{ bandwidth: 4 * MBIT }] }).limits,
    { rate: 5 * MBIT, ceil: 5 * MBIT },
    'ceil: auto follows the rate',
  );
  const withOverride = policyOf({ rate: 'auto' }, { overrides: [{ user: 'remi', rate: '8mbit' }] });
  t.match(withOverride.limitsFor({ ...at, user: 'Remi', streams: [{ bandwidth: 2 * MBIT }] }), { limits: { rate: 8 * MBIT }, why: 'override (user remi)' });
  t.match(
    policyOf({ rate: '4mbit' }).limitsFor({ ...at, streams: [{ bandwidth: 9 * MBIT }] }),
    { limits: { rate: 4 * MBIT }, why: 'fixed client rate' },
    'a fixed rate ignores the need',
  );
});

t.test('config: auto and its knobs validated with clear errors', async (t) => {
  t.throws(() => validateConfig({ ...base, client: { rate: '4mbit', ceil: 'auto' } }), /'client.ceil' = "auto": ceil: auto needs rate: auto/);
  t.throws(() => validateConfig({ ...base, client: { rate: 'auto', min: '30mbit', max: '20mbit' } }), /'client.min' = "30mbit": min is above max/);
  t.throws(() => validateConfig({ ...base, client: { rate: 'auto', headroom: 0.5 } }), /'client.headroom' = 0.5/);
  t.throws(() => validateConfig({ ...base, client: { rate: 'fast' } }), /'client.rate' = "fast"/);
  t.equal(validateConfig({ ...base, client: { rate: '4mbit' } }).client.rate, 4_000_000, 'a fixed rate is parsed once, into bits/s');
});

t.test('config: a bad rate in a nested key is one line naming the key and the value; good ones arrive in bits/s', async (t) => {
  const client = { rate: '4mbit' };
  const refused = (extra: object) => {
    try {
      validateConfig({ ...base, client, ...extra });
    } catch (error) {
      return (error as Error).message;
    }
    return 'accepted';
  };
  const override = refused({
    overrides: [
      { user: 'remi', rate: '8mbit' },
      { network: '10.0.0.0/8', rate: '3mbit', ceil: '12furlongs' },
    ],
  });
  t.match(override, /^config: 'overrides\.1\.ceil' = "12furlongs": invalid rate "12furlongs": unknown unit 'furlongs'/);
  t.notMatch(override, /\n/, 'one line');
  const schedule = refused({ schedules: [{ from: '18:00', to: '23:00', server: { rate: -5 } }] });
  t.match(schedule, /^config: 'schedules\.0\.server\.rate' = -5: invalid rate -5/);
  t.notMatch(schedule, /\n/, 'one line');
  const config = validateConfig({
    ...base,
    client,
    overrides: [{ user: 'remi', rate: '8mbit', ceil: '1gbit' }],
    schedules: [{ from: '18:00', to: '23:00', server: { rate: '500kbps' } }],
  });
  t.same(config.overrides[0], { user: 'remi', rate: 8 * MBIT, ceil: 1000 * MBIT });
  t.same(config.schedules[0]!.server, { rate: 4 * MBIT }, '500kbps is bytes: 4 Mbit/s');
  t.same(
    validateConfig({ ...base, client: { rate: 'auto' } }).client,
    { rate: 'auto', headroom: 1.25, directPlayHeadroom: 2, min: 1 * MBIT, max: 20 * MBIT },
    'auto bounds default to bits/s too',
  );
});

t.test('the tracker changes the class in place when a stream’s need moves, and only then', async (t) => {
  const calls: Array<[string, string, Limits?]> = [];
  const decisions: Decision[] = [];
  const tracker = new SessionTracker({
    graceMs: 1000,
    idleMs: 60_000,
    policy: policyOf({ rate: 'auto', ceil: 'auto' }),
    shaper: {
      throttle: async (address, limits) => void calls.push(['throttle', address, limits]),
      release: async (address) => void calls.push(['release', address]),
    },
    onDecision: (decision) => decisions.push(decision),
  });
  const event = (kind: PlaybackEvent['kind'], session: string, bandwidth?: number): PlaybackEvent => ({
    kind,
    address: '203.0.113.7',
    port: 0,
    sessionKey: session,
    timestamp: new Date(),
    path: '/status/sessions',
    source: 'plex',
    ...(bandwidth ? { bandwidth } : {}),
  });
  tracker.handle(event('start', 'm:1', 4 * MBIT));
  await tracker.settled();
  tracker.handle(event('progress', 'm:1', 4 * MBIT));
  tracker.handle(event('progress', 'm:1')); // a notification: no figures, the known need stays
  await tracker.settled();
  t.same(calls, [['throttle', '203.0.113.7', { rate: 5 * MBIT, ceil: 5 * MBIT }]], 'the same need again changes nothing');
  tracker.handle(event('progress', 'm:1', 8 * MBIT));
  await tracker.settled();
  t.same(calls.at(-1), ['throttle', '203.0.113.7', { rate: 10 * MBIT, ceil: 10 * MBIT }], 'quality switch: one change to the new rate');
  tracker.handle(event('start', 'm:2', 2 * MBIT));
  await tracker.settled();
  t.same(calls.at(-1)?.[2], { rate: 12.5 * MBIT, ceil: 12.5 * MBIT }, 'a second stream from the same address adds up');
  tracker.handle(event('stop', 'm:1'));
  await tracker.settled();
  t.same(calls.at(-1)?.[2], { rate: 2.5 * MBIT, ceil: 2.5 * MBIT }, 'when one ends the pipe narrows to the other');
  t.equal(calls.length, 4, 'one kernel call per change of need');
  t.same(
    decisions.filter((d) => d.action === 'throttle' || d.action === 'change').map((d) => [d.action, d.reason]),
    [
      ['throttle', 'auto: 4.00 Mbit/s Plex bandwidth × 1.25 = 5.00 Mbit/s'],
      ['change', 'auto: 8.00 Mbit/s Plex bandwidth × 1.25 = 10.00 Mbit/s'],
      ['change', 'auto: 8.00 Mbit/s Plex bandwidth × 1.25 + 2.00 Mbit/s Plex bandwidth × 1.25 = 12.50 Mbit/s'],
      ['change', 'auto: 2.00 Mbit/s Plex bandwidth × 1.25 = 2.50 Mbit/s'],
    ],
    'every decision says which rate and why',
  );
});

t.test('from the log: the transcode request’s maxVideoBitrate × headroom, else max; the API’s figures win when both sources know the stream', async (t) => {
  const calls: Array<Limits | undefined> = [];
  const decisions: Decision[] = [];
  const tracker = new SessionTracker({
    graceMs: 1000,
    idleMs: 60_000,
    policy: policyOf({ rate: 'auto', ceil: 'auto', max: '20mbit' }),
    shaper: { throttle: async (_address, limits) => void calls.push(limits), release: async () => void calls.push(undefined) },
    onDecision: (decision) => decisions.push(decision),
  });
  const parser = new PlexLogParser();
  const line = (path: string) =>
    parser.parse(`Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET ${path} (28 live) #4836 TLS GZIP Signed-in Token (remi)`)!;
  tracker.handle(line('/video/:/transcode/universal/decision?directPlay=0&directStream=1&maxVideoBitrate=4000&session=s1&videoResolution=1280x720'));
  await tracker.settled();
  t.same(calls.at(-1), { rate: 5 * MBIT, ceil: 5 * MBIT }, '4000 kbit/s cap × 1.25 = a 5 Mbit/s pipe');
  t.equal(decisions.at(-1)?.reason, 'auto: 4.00 Mbit/s maxVideoBitrate of the transcode request × 1.25 = 5.00 Mbit/s', 'the decision says which rate and why');
  tracker.handle(line('/video/:/transcode/universal/session/s1/base/00012.ts'));
  await tracker.settled();
  t.equal(calls.length, 1, 'segment fetches keep the known cap: no change');
  tracker.handle(line('/video/:/transcode/universal/decision?maxVideoBitrate=40000&session=s1'));
  await tracker.settled();
  t.match(
    decisions.at(-1),
    { action: 'change', limits: { rate: 20 * MBIT }, reason: /40\.00 Mbit\/s maxVideoBitrate .* clamped to max/ },
    'a new quality: the class changes, clamped',
  );

  tracker.handle({
    kind: 'start',
    address: '203.0.113.7',
    port: 0,
    sessionKey: 'm:7',
    timestamp: new Date(),
    path: '/status/sessions',
    source: 'plex',
    bandwidth: 3 * MBIT,
  });
  await tracker.settled();
  t.same(calls.at(-1), { rate: 3.75 * MBIT, ceil: 3.75 * MBIT }, 'the same stream seen by the API: its bandwidth counts, the log’s cap does not add to it');
  t.match(tracker.summary()[0], { source: 'log+plex', streamBandwidth: 3 * MBIT });

  tracker.handle(line('/video/:/transcode/universal/start.m3u8?session=s2'));
  tracker.handle({ kind: 'start', address: '198.51.100.4', port: 0, sessionKey: 'x', timestamp: new Date(), path: '/library/parts/1/2/file.mkv' });
  await tracker.settled();
  t.match(
    decisions.filter((d) => d.address === '198.51.100.4').at(-1),
    { action: 'throttle', limits: { rate: 20 * MBIT }, reason: 'auto: stream need unknown, max rate' },
    'no cap in the request: max',
  );
});
