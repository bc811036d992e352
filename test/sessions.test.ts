import t from 'tap';
import type { PlaybackEvent } from '../daemon/sources/source.js';
import type { PolicyConfig } from '../daemon/config.js';
import { type Limits, Policy } from '../daemon/sessions/policy.js';
import { type ClientShaper, type Decision, SessionTracker } from '../daemon/sessions/sessions.js';

/** Records kernel changes and keeps the resulting "kernel" state, as the real Shaper would. */
class RecordingShaper implements ClientShaper {
  readonly changes: string[] = [];
  readonly state = new Map<string, Limits>();
  bytes = new Map<string, number>();
  async throttle(address: string, limits: Limits) {
    this.changes.push(`throttle ${address} ${limits.rate}`);
    this.state.set(address, limits);
  }
  async release(address: string) {
    this.changes.push(`release ${address}`);
    this.state.delete(address);
  }
  bytesSent(address: string) {
    return this.bytes.get(address);
  }
}

const basePolicy: PolicyConfig = {
  client: { rate: 2_000_000, ceil: 2_500_000 },
  server: { rate: 5_000_000 },
  exempt: ['127.0.0.0/8', '192.168.1.0/24'],
  remoteOnly: false,
  localNetworks: [],
  overrides: [
    { user: 'remi', rate: 4_000_000 },
    { network: '198.51.100.0/24', rate: 1_000_000 },
  ],
  schedules: [],
};

function setup(policy: Partial<PolicyConfig> = {}) {
  let now = 1_000_000;
  const shaper = new RecordingShaper();
  const decisions: Decision[] = [];
  const tracker = new SessionTracker({
    graceMs: 5000,
    idleMs: 60_000,
    policy: new Policy({ ...basePolicy, ...policy }),
    shaper,
    now: () => now,
    onDecision: (decision) => decisions.push(decision),
  });
  return {
    shaper,
    tracker,
    decisions,
    advance: (ms: number) => {
      now += ms;
      tracker.sweep();
    },
  };
}

let seq = 0;
function event(kind: PlaybackEvent['kind'], address: string, sessionKey = 's1', extra: Partial<PlaybackEvent> = {}): PlaybackEvent {
  return { kind, address, port: 40000 + seq++, sessionKey, timestamp: new Date(), path: '/video/:/transcode/universal/start.m3u8', ...extra };
}

t.test('first start throttles at once; stop releases only after the grace period', async (t) => {
  const { shaper, tracker, advance } = setup();
  tracker.handle(event('start', '203.0.113.7'));
  await tracker.settled();
  t.same(shaper.changes, ['throttle 203.0.113.7 2000000']);
  t.same(shaper.state.get('203.0.113.7'), { rate: 2_000_000, ceil: 2_500_000 });
  tracker.handle(event('stop', '203.0.113.7'));
  advance(4999);
  await tracker.settled();
  t.equal(shaper.changes.length, 1, 'still throttled inside the grace period');
  advance(2);
  await tracker.settled();
  t.same(shaper.changes, ['throttle 203.0.113.7 2000000', 'release 203.0.113.7']);
  t.equal(shaper.state.size, 0);
  t.same(tracker.summary(), [], 'forgotten once released');
});

t.test('a seek storm of 1,000 events makes at most 2 kernel changes and ends in the right state', async (t) => {
  for (const endsPlaying of [true, false]) {
    const { shaper, tracker, advance } = setup();
    for (let i = 0; i < 500; i++) {
      tracker.handle(event('stop', '203.0.113.9', `seek-${i}`));
      tracker.handle(event('start', '203.0.113.9', `seek-${i + 1}`));
      if (i % 50 === 0) advance(10); // the storm takes a while; sweeps run meanwhile
    }
    if (!endsPlaying) tracker.handle(event('stop', '203.0.113.9', 'seek-500'));
    advance(10_000);
    await tracker.settled();
    t.ok(shaper.changes.length <= 2, `${shaper.changes.length} kernel changes (ends ${endsPlaying ? 'playing' : 'stopped'})`);
    t.equal(shaper.state.has('203.0.113.9'), endsPlaying, 'final kernel state is right');
    t.equal(tracker.kernelChanges, shaper.changes.length);
  }
});

t.test('two devices behind one NAT address share a pipe until both stop', async (t) => {
  const { shaper, tracker, advance } = setup();
  tracker.handle(event('start', '203.0.113.20', 'tv'));
  tracker.handle(event('start', '203.0.113.20', 'phone'));
  tracker.handle(event('stop', '203.0.113.20', 'tv'));
  advance(30_000);
  await tracker.settled();
  t.same(shaper.changes, ['throttle 203.0.113.20 2000000'], 'phone still plays: pipe kept');
  tracker.handle(event('stop', '203.0.113.20', 'phone'));
  advance(5001);
  await tracker.settled();
  t.same(shaper.changes.at(-1), 'release 203.0.113.20');
});

t.test('vanished clients: released after idle time with no log lines and no bytes; bytes keep them', async (t) => {
  const { shaper, tracker, advance, decisions } = setup();
  tracker.handle(event('start', '203.0.113.30'));
  tracker.handle(event('start', '203.0.113.31'));
  await tracker.settled();
  for (let i = 0; i < 8; i++) {
    shaper.bytes.set('203.0.113.31', i * 100_000); // .31 still receives data (paused app buffering, say)
    advance(10_000);
  }
  await tracker.settled();
  t.notOk(shaper.state.has('203.0.113.30'), 'the silent client was released');
  t.ok(shaper.state.has('203.0.113.31'), 'the client whose class still moves bytes keeps its pipe');
  t.ok(decisions.some((d) => d.action === 'expire' && d.address === '203.0.113.30'));
});

t.test('paused sessions keep their pipe while Plex keeps reporting them', async (t) => {
  const { shaper, tracker, advance } = setup();
  tracker.handle(event('start', '203.0.113.40'));
  for (let i = 0; i < 10; i++) {
    tracker.handle(event('pause', '203.0.113.40'));
    advance(30_000);
  }
  await tracker.settled();
  t.ok(shaper.state.has('203.0.113.40'));
  t.equal(tracker.summary()[0]?.state, 'paused');
});

t.test('exemptions and overrides', async (t) => {
  const { shaper, tracker, decisions } = setup();
  tracker.handle(event('start', '192.168.1.50'));
  tracker.handle(event('start', '127.0.0.1'));
  tracker.handle(event('start', '203.0.113.60', 's', { user: 'Remi' }));
  tracker.handle(event('start', '198.51.100.4'));
  await tracker.settled();
  t.notOk(shaper.state.has('192.168.1.50'), 'LAN exempt');
  t.notOk(shaper.state.has('127.0.0.1'), 'loopback exempt');
  t.same(shaper.state.get('203.0.113.60'), { rate: 4_000_000, ceil: 4_000_000 }, 'per-user override (case-insensitive)');
  t.same(shaper.state.get('198.51.100.4'), { rate: 1_000_000, ceil: 1_000_000 }, 'per-network override');
  t.equal(decisions.filter((d) => d.action === 'exempt').length, 2);
});

t.test("an override naming a source applies to that server's clients only; without a source, to any", async (t) => {
  const { shaper, tracker, decisions } = setup({
    overrides: [
      { user: 'alice', rate: 3_000_000 },
      { user: 'alice', source: 'jellyfin', rate: 8_000_000 },
      { network: '198.51.100.0/24', source: 'emby', rate: 1_000_000 },
    ],
  });
  tracker.handle(event('start', '203.0.113.1', 'plex:1', { user: 'Alice', source: 'plex' }));
  tracker.handle(event('start', '203.0.113.2', 'jf:1', { user: 'alice', source: 'jellyfin' }));
  tracker.handle(event('start', '203.0.113.3', 'log:1', { user: 'alice' }));
  tracker.handle(event('start', '198.51.100.7', 'plex:2', { source: 'plex' }));
  tracker.handle(event('start', '198.51.100.8', 'emby:1', { source: 'emby' }));
  await tracker.settled();
  t.same(shaper.state.get('203.0.113.2')?.rate, 8_000_000, 'alice on Jellyfin: the override naming jellyfin, though the general one comes first');
  t.same(shaper.state.get('203.0.113.1')?.rate, 3_000_000, 'alice on Plex: the override without a source');
  t.same(shaper.state.get('203.0.113.3')?.rate, 3_000_000, 'alice in the Plex log: the same');
  t.same(shaper.state.get('198.51.100.7')?.rate, 2_000_000, 'a network override naming emby leaves a Plex client at the default');
  t.same(shaper.state.get('198.51.100.8')?.rate, 1_000_000, 'and applies to an Emby client in that network');
  t.match(
    decisions.filter((d) => d.action === 'throttle' && d.address === '203.0.113.2'),
    [{ reason: 'override (user alice on jellyfin)' }],
    'the decision names the source',
  );
});

t.test('remote streams only: what the source says (local), else the local networks decide', async (t) => {
  const { shaper, tracker } = setup({ remoteOnly: true, localNetworks: ['10.0.0.0/8'], exempt: [] });
  tracker.handle(event('start', '10.1.2.3', 's', { local: false })); // the server says remote (e.g. via a VPN)
  tracker.handle(event('start', '172.16.0.9', 's', { local: true }));
  tracker.handle(event('start', '10.9.9.9'));
  tracker.handle(event('start', '203.0.113.70'));
  await tracker.settled();
  t.same([...shaper.state.keys()].sort(), ['10.1.2.3', '203.0.113.70']);
});

t.test('a failed kernel change is reported and retried on the next event', async (t) => {
  const { tracker, shaper } = setup();
  let fail = true;
  const errors: unknown[] = [];
  const original = shaper.throttle.bind(shaper);
  shaper.throttle = async (address, limits) => {
    if (fail) throw new Error('EPERM');
    return original(address, limits);
  };
  (tracker as unknown as { options: { onError: (e: unknown) => void } }).options.onError = (error) => errors.push(error);
  tracker.handle(event('start', '203.0.113.80'));
  await tracker.settled();
  t.equal(errors.length, 1);
  fail = false;
  tracker.handle(event('progress', '203.0.113.80'));
  await tracker.settled();
  t.ok(shaper.state.has('203.0.113.80'));
});

t.test('time-of-day schedules pick the server ceiling', async (t) => {
  const policy = new Policy({
    ...basePolicy,
    schedules: [
      { from: '18:00', to: '23:00', server: { rate: 3_000_000 } },
      { from: '23:30', to: '01:00', days: [5], server: { rate: 1_000_000 } },
    ],
  });
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 24, 12, 0)).rate, 5_000_000);
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 24, 18, 0)).rate, 3_000_000);
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 24, 22, 59)).rate, 3_000_000);
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 27, 23, 45)).rate, 1_000_000, 'Friday 23:45');
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 28, 0, 30)).rate, 1_000_000, 'after midnight still Friday’s window');
  t.equal(policy.serverLimitsAt(new Date(2026, 10, 29, 0, 30)).rate, 5_000_000, 'Sunday 00:30: Saturday has no window');
  t.throws(() => new Policy({ ...basePolicy, schedules: [{ from: '25:00', to: '1:00', server: { rate: 1_000_000 } }] }), /invalid time of day "25:00"/);
});

t.test('a late ping or timeline line of a stopped session does not bring it back; a new start does', async (t) => {
  const { shaper, tracker, advance } = setup();
  tracker.handle(event('start', '203.0.113.90', 'a'));
  tracker.handle(event('stop', '203.0.113.90', 'a'));
  tracker.handle(event('progress', '203.0.113.90', 'a')); // straggler
  advance(5001);
  await tracker.settled();
  t.notOk(shaper.state.has('203.0.113.90'), 'released despite the straggler');
  tracker.handle(event('start', '203.0.113.90', 'a'));
  await tracker.settled();
  t.ok(shaper.state.has('203.0.113.90'), 'the same session started again is live');
});

t.test('ever new session keys without stops stay bounded: the one heard from longest ago goes beyond 32', async (t) => {
  const { shaper, tracker, decisions } = setup();
  tracker.handle(event('start', '203.0.113.95', 'real'));
  for (let i = 0; i < 1000; i++) {
    tracker.handle(event('start', '203.0.113.95', `garbage-${i}`));
    tracker.handle(event('stop', '203.0.113.95', `never-started-${i}`));
    if (i % 10 === 0) tracker.handle(event('progress', '203.0.113.95', 'real')); // the real stream keeps talking
  }
  await tracker.settled();
  const [client] = tracker.summary();
  t.equal(client?.sessions.length, 32, '32 live sessions kept, not 1,001');
  t.ok(client?.sessions.includes('real'), 'the session still heard from is among them');
  t.equal(decisions.filter((d) => d.action === 'expire').length, 1001 - 32, 'every one dropped is an expire decision');
  t.same(shaper.changes, ['throttle 203.0.113.95 2000000'], 'the pipe is untouched');
  // Only the latest 64 stops are remembered: a straggler of the last one is still ignored.
  tracker.handle(event('stop', '203.0.113.95', 'real'));
  tracker.handle(event('progress', '203.0.113.95', 'real'));
  t.notOk(tracker.summary()[0]?.sessions.includes('real'), 'a straggler of the latest stop does not bring it back');
});
