/** Plex log lines → playback events: real formats old and new, proxies, IPv6, and garbage. */
import t from 'tap';
import { PlexLogParser } from '../daemon/sources/parse.js';
import type { PlaybackEvent } from '../daemon/sources/source.js';

const year = 2026;
const cases: Array<{ name: string; line: string; expect: Partial<PlaybackEvent> | undefined }> = [
  {
    name: 'transcode decision (2026 format, nested network label, inline header)',
    line: 'Sep 26, 2026 22:48:26.451 [140562] DEBUG - Request: [10.0.0.2:62048 (Allowed Network (Subnet))] GET /video/:/transcode/universal/decision?hasMDE=1&path=%2Flibrary%2Fmetadata%2F40859&directPlay=0&directStream=1&location=lan&session=e0u2xhmoixv6v6vvbea8jbt9 (27 live) #48355 TLS GZIP Signed-in Token (remi) / Accept => application/json',
    expect: {
      kind: 'start',
      address: '10.0.0.2',
      port: 62048,
      network: 'Allowed Network (Subnet)',
      local: true,
      source: 'log',
      sessionKey: 'e0u2xhmoixv6v6vvbea8jbt9',
      user: 'remi',
      path: '/video/:/transcode/universal/decision',
      timestamp: new Date(year, 8, 26, 22, 48, 26, 451),
    },
  },
  {
    name: 'library browsing is not playback',
    line: 'Aug 04, 2026 06:58:17.248 [132687933201208] DEBUG - Request: [192.168.1.111:55824 (Subnet)] GET /library/sections/3/all (3 live) #57d3a Page 0--1 Signed-in Token (masyllis)',
    expect: undefined,
  },
  {
    name: 'websocket is not playback',
    line: 'Sep 20, 2026 14:35:40.287 [266479181275360] DEBUG - Request: [172.30.0.2:56840 (WAN)] GET /:/websockets/notifications (11 live) #3c7f4 GZIP Signed-in Token (testuser) / X-Forwarded-For => 61.43.124.100',
    expect: undefined,
  },
  {
    name: 'HLS start',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?session=abc123&X-Plex-Token=SECRETTOKEN1 (28 live) #4836 TLS GZIP Signed-in Token (remi)',
    expect: { kind: 'start', address: '203.0.113.7', network: 'WAN', local: false, sessionKey: 'abc123' },
  },
  {
    name: 'DASH start',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/start.mpd?session=abc123 (28 live) #4836',
    expect: { kind: 'start', sessionKey: 'abc123' },
  },
  {
    name: 'plain start (direct stream)',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/start?session=abc123 (28 live)',
    expect: { kind: 'start' },
  },
  {
    name: 'segment fetch keeps the session alive',
    line: 'Sep 26, 2026 22:48:40.100 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/session/abc123/base/00012.ts (28 live)',
    expect: { kind: 'progress', sessionKey: 'abc123' },
  },
  {
    name: 'ping',
    line: 'Sep 26, 2026 22:49:00.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/ping?session=abc123 (28 live)',
    expect: { kind: 'progress', sessionKey: 'abc123' },
  },
  {
    name: 'timeline playing',
    line: 'Sep 26, 2026 22:49:10.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /:/timeline?ratingKey=40859&state=playing&time=1000&X-Plex-Session-Identifier=abc123&X-Plex-Client-Identifier=dev-1 (28 live) Signed-in Token (remi)',
    expect: { kind: 'progress', sessionKey: 'abc123' },
  },
  {
    name: 'timeline buffering',
    line: 'Sep 26, 2026 22:49:10.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /:/timeline?state=buffering&X-Plex-Session-Identifier=abc123 (28 live)',
    expect: { kind: 'progress' },
  },
  {
    name: 'timeline paused',
    line: 'Sep 26, 2026 22:49:20.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /:/timeline?state=paused&X-Plex-Session-Identifier=abc123 (28 live)',
    expect: { kind: 'pause', sessionKey: 'abc123' },
  },
  {
    name: 'timeline stopped',
    line: 'Sep 26, 2026 22:59:20.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /:/timeline?state=stopped&X-Plex-Session-Identifier=abc123 (28 live)',
    expect: { kind: 'stop', sessionKey: 'abc123' },
  },
  {
    name: 'transcode stop',
    line: 'Sep 26, 2026 22:59:20.100 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/stop?session=abc123 (28 live)',
    expect: { kind: 'stop', sessionKey: 'abc123' },
  },
  {
    name: 'timeline without a state is not an event',
    line: 'Sep 26, 2026 22:59:20.000 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /:/timeline?ratingKey=1 (28 live)',
    expect: undefined,
  },
  {
    name: 'direct play file request',
    line: 'Sep 26, 2026 23:00:00.000 [140562] DEBUG - Request: [198.51.100.4:40000 (WAN)] GET /library/parts/123/1690000000/file.mkv?X-Plex-Client-Identifier=tv-9 (3 live)',
    expect: { kind: 'start', address: '198.51.100.4', sessionKey: 'tv-9' },
  },
  {
    name: 'part indexes are not playback',
    line: 'Sep 26, 2026 23:00:00.000 [140562] DEBUG - Request: [198.51.100.4:40000 (WAN)] GET /library/parts/123/indexes/sd/1000 (3 live)',
    expect: undefined,
  },
  {
    name: 'thumbnail transcode is not playback',
    line: 'Sep 26, 2026 23:00:00.000 [140562] DEBUG - Request: [198.51.100.4:40000 (WAN)] GET /photo/:/transcode?width=240&height=360&url=%2Flibrary%2Fmetadata%2F1%2Fthumb (3 live)',
    expect: undefined,
  },
  {
    name: '2016 format: hex thread id, no label, no milliseconds',
    line: 'Jan 04, 2016 21:13:07 [0x7f2b5e7fc700] DEBUG - Request: [192.168.1.20:51432] GET /video/:/transcode/universal/start.m3u8?session=old1 [192.168.1.20:51432] (3 live)',
    expect: { kind: 'start', address: '192.168.1.20', port: 51432, sessionKey: 'old1', timestamp: new Date(2016, 0, 4, 21, 13, 7, 0) },
  },
  {
    name: 'em dash level marker',
    line: 'Mar 02, 2019 10:00:00.5 [0x7f00] Debug — Request: [203.0.113.9:1234 (WAN)] GET /video/:/transcode/universal/ping?session=em (1 live)',
    expect: { kind: 'progress', address: '203.0.113.9', sessionKey: 'em', timestamp: new Date(2019, 2, 2, 10, 0, 0, 500) },
  },
  {
    name: 'user name with spaces',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.10:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?session=s2 (28 live) #4836 TLS Signed-in Token (Jane Doe)',
    expect: { user: 'Jane Doe' },
  },
  {
    name: 'IPv6 without brackets, port after the last colon',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [2001:db8::7:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?session=v6 (28 live)',
    expect: { address: '2001:db8::7', port: 51000 },
  },
  {
    name: 'IPv6 in brackets',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [[2001:DB8::8]:51000 (WAN)] GET /video/:/transcode/universal/ping?session=v6b (28 live)',
    expect: { address: '2001:db8::8', port: 51000 },
  },
  {
    name: 'IPv4-mapped IPv6 becomes IPv4',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [::ffff:203.0.113.11:51000 (WAN)] GET /video/:/transcode/universal/ping?session=m (28 live)',
    expect: { address: '203.0.113.11' },
  },
  {
    name: 'trusted proxy: X-Forwarded-For names the client',
    line: 'Sep 20, 2026 14:35:40.287 [266] DEBUG - Request: [172.30.0.2:56840 (WAN)] GET /video/:/transcode/universal/start.m3u8?session=p1 (11 live) #3c7f4 GZIP Signed-in Token (testuser) / X-Forwarded-For => 61.43.124.100',
    expect: { address: '61.43.124.100', sessionKey: 'p1', user: 'testuser' },
  },
  {
    name: 'trusted proxy chain: right-most untrusted hop',
    line: 'Sep 20, 2026 14:35:40.287 [266] DEBUG - Request: [172.30.0.2:56840 (WAN)] GET /video/:/transcode/universal/ping?session=p2 (11 live) / X-Forwarded-For => 1.2.3.4, 61.43.124.101, 172.30.0.9 / Accept => */*',
    expect: { address: '61.43.124.101' },
  },
  {
    name: 'trusted proxy with X-Real-IP',
    line: 'Sep 20, 2026 14:35:40.287 [266] DEBUG - Request: [172.30.0.2:56840 (WAN)] GET /video/:/transcode/universal/ping?session=p3 (11 live) / X-Real-IP => 2001:db8::99',
    expect: { address: '2001:db8::99' },
  },
  {
    name: 'untrusted peer: X-Forwarded-For is ignored',
    line: 'Sep 20, 2026 14:35:40.287 [266] DEBUG - Request: [203.0.113.50:56840 (WAN)] GET /video/:/transcode/universal/ping?session=p4 (11 live) / X-Forwarded-For => 61.43.124.100',
    expect: { address: '203.0.113.50' },
  },
  {
    name: 'music transcode',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.12:51000 (WAN)] GET /music/:/transcode/universal/start.mpd?session=mu (28 live)',
    expect: { kind: 'start', sessionKey: 'mu' },
  },
  {
    name: 'no identity at all: the address is the session',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.13:51000 (WAN)] GET /video/:/transcode/universal/decision (28 live)',
    expect: { sessionKey: '203.0.113.13' },
  },
  {
    name: 'transcode decision with a quality cap (Plex Web at 4 Mbps 720p): maxVideoBitrate in bits/s',
    line: 'Sep 26, 2026 22:48:26.451 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/decision?advancedSubtitles=text&audioBoost=100&autoAdjustQuality=0&directPlay=0&directStream=1&directStreamAudio=1&fastSeek=1&hasMDE=1&location=wan&maxVideoBitrate=4000&mediaBufferSize=102400&mediaIndex=0&partIndex=0&path=%2Flibrary%2Fmetadata%2F40859&protocol=dash&session=q4000&subtitleSize=100&videoQuality=90&videoResolution=1280x720&X-Plex-Product=Plex%20Web&X-Plex-Token=SECRETTOKEN1 (28 live) #4836 TLS GZIP Signed-in Token (remi)',
    expect: { kind: 'start', sessionKey: 'q4000', maxVideoBitrate: 4_000_000 },
  },
  {
    name: 'HLS start with a cap (Plex for Android, 2 Mbps)',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.8:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?hasMDE=1&maxVideoBitrate=2000&path=%2Flibrary%2Fmetadata%2F1&protocol=hls&session=a2000&videoResolution=1280x720 (28 live)',
    expect: { kind: 'start', sessionKey: 'a2000', maxVideoBitrate: 2_000_000 },
  },
  {
    name: 'a cap of 0 or garbage says nothing',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Request: [203.0.113.8:51000 (WAN)] GET /video/:/transcode/universal/start.m3u8?maxVideoBitrate=0&session=z (28 live)',
    expect: { kind: 'start', maxVideoBitrate: undefined },
  },
  {
    name: 'a direct-play file request is not capped by its query',
    line: 'Sep 26, 2026 23:00:00.000 [140562] DEBUG - Request: [198.51.100.4:40000 (WAN)] GET /library/parts/123/1690000000/file.mkv?maxVideoBitrate=2000&X-Plex-Client-Identifier=tv-9 (3 live)',
    expect: { kind: 'start', maxVideoBitrate: undefined },
  },
  {
    name: 'a segment fetch carries no cap',
    line: 'Sep 26, 2026 22:48:40.100 [140562] DEBUG - Request: [203.0.113.7:51000 (WAN)] GET /video/:/transcode/universal/session/q4000/base/00012.ts?maxVideoBitrate=9000 (28 live)',
    expect: { kind: 'progress', maxVideoBitrate: undefined },
  },
  {
    name: 'other log lines',
    line: 'Sep 26, 2026 22:48:27.001 [140562] DEBUG - Completed: [203.0.113.13:51000] 200 GET /video/:/transcode/universal/decision (28 live) 5ms 1234 bytes',
    expect: undefined,
  },
];

t.test('real-format lines → events', async (t) => {
  const parser = new PlexLogParser({ trustedProxies: ['172.30.0.0/16'] });
  for (const { name, line, expect } of cases) {
    const event = parser.parse(line);
    if (expect === undefined) t.equal(event, undefined, name);
    else t.match(event, expect, name);
  }
  t.equal(parser.stats.lines, cases.length);
  t.equal(parser.stats.playback + parser.stats.ignored + parser.stats.malformed, parser.stats.lines, 'every line is counted once');
});

t.test('tokens never reach an event', async (t) => {
  const parser = new PlexLogParser();
  const event = parser.parse(
    'Sep 26, 2026 22:48:27.001 [1] DEBUG - Request: [203.0.113.7:5 (WAN)] GET /video/:/transcode/universal/start.m3u8?X-Plex-Token=SECRETTOKEN1&session=s&X-Plex-Client-Identifier=c (1 live) / X-Plex-Token => SECRETTOKEN2',
  );
  t.ok(event);
  t.notMatch(JSON.stringify(event), /SECRETTOKEN/);
});

t.test('malformed playback lines are counted, never thrown', async (t) => {
  const parser = new PlexLogParser();
  for (const line of [
    'garbage Request: [ /video/:/transcode/universal/start',
    'Sep 26, 2026 22:48:27.001 [1] DEBUG - Request: [not-an-ip:5 (WAN)] GET /video/:/transcode/universal/start.m3u8 (1 live)',
    'Xyz 99, 2026 22:48:27.001 [1] DEBUG - Request: [203.0.113.7:5] GET /video/:/transcode/universal/ping (1 live)',
    'Sep 26, 2026 22:48:27.001 [1] DEBUG - Request: [203.0.113.7:99999] GET /video/:/transcode/universal/ping (1 live)',
  ]) {
    t.equal(parser.parse(line), undefined);
  }
  t.equal(parser.stats.malformed, 4);
});

t.test('fuzz: random bytes, splices of real lines, huge lines — no throw, counts add up', async (t) => {
  const parser = new PlexLogParser({ trustedProxies: ['10.0.0.0/8'] });
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const real = cases.map((c) => c.line);
  const thrown: unknown[] = [];
  for (let i = 0; i < 20000; i++) {
    const pick = random();
    let line: string;
    if (pick < 0.3) {
      line = Buffer.from(Array.from({ length: Math.floor(random() * 300) }, () => Math.floor(random() * 256))).toString('latin1');
    } else if (pick < 0.9) {
      const a = real[Math.floor(random() * real.length)]!;
      const b = real[Math.floor(random() * real.length)]!;
      line = a.slice(0, Math.floor(random() * a.length)) + b.slice(Math.floor(random() * b.length));
    } else {
      line = `Sep 26, 2026 22:48:27.001 [1] DEBUG - Request: [203.0.113.7:5 (WAN)] GET /video/:/transcode/universal/start?${'a'.repeat(1 + Math.floor(random() * 2_000_000))}`;
    }
    try {
      parser.parse(line);
    } catch (error) {
      thrown.push(error);
    }
  }
  t.same(thrown, [], 'no input made the parser throw');
  const { lines, playback, ignored, malformed } = parser.stats;
  t.equal(lines, 20000);
  t.equal(playback + ignored + malformed, lines);
});
