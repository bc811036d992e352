// The two ends of a direct-played stream, run with bare node under `ip netns exec` (see playback.ts).
//
//   serve ADDRESS PORT      a file server: each connection sends one line, the byte offset to start at, and
//                           gets bytes from there as fast as TCP takes them (as Plex serves a direct-played
//                           file: the player's reading is the only brake).
//   play CONFIG.json        a player: for each session (a start or a seek) it connects, asks for the bytes
//                           of the media from the session's offset, turns bytes into media seconds with the
//                           bitrate trace, and plays: starts once `startBuffer` seconds are buffered, stalls
//                           when the playhead reaches the buffered end (a rebuffer), resumes at
//                           `resumeBuffer`, and stops reading while `maxBuffer` seconds are ahead. Prints one
//                           JSON line per session.
import net from 'node:net';
import { readFileSync } from 'node:fs';

const [mode, ...rest] = process.argv.slice(2);
const CHUNK = Buffer.alloc(64 * 1024);

if (mode === 'serve') {
  const [address, port] = rest;
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => {
      // The offset only tells where in the file we are; the bytes themselves do not matter.
      const pump = () => {
        while (!socket.destroyed && socket.write(CHUNK)) {
          /* keep the socket buffer full */
        }
      };
      socket.on('drain', pump);
      pump();
    });
  });
  server.listen(Number(port), address, () => process.stdout.write('listening\n'));
} else if (mode === 'play') {
  const config = JSON.parse(readFileSync(rest[0], 'utf8'));
  // cumulative[i]: bytes of the media's first i seconds.
  const cumulative = [0];
  for (const bits of config.trace) cumulative.push(cumulative.at(-1) + bits / 8);
  /** Media seconds covered by the first `bytes` from second `offset` (fractional). */
  const mediaAt = (offset, bytes) => {
    const target = cumulative[offset] + bytes;
    let second = offset;
    while (second < config.trace.length && cumulative[second + 1] <= target) second++;
    if (second >= config.trace.length) return config.trace.length - offset;
    return second - offset + (target - cumulative[second]) / (cumulative[second + 1] - cumulative[second]);
  };
  for (const session of config.sessions) process.stdout.write(`${JSON.stringify(await play(config, session, mediaAt))}\n`);
  process.exit(0);
} else {
  process.stderr.write('usage: playback-peer.mjs serve ADDRESS PORT | play CONFIG.json\n');
  process.exit(64);
}

function play(config, session, mediaAt) {
  return new Promise((resolve, reject) => {
    const began = performance.now();
    let bytes = 0;
    let downloaded = 0; // media seconds buffered since the offset
    let playhead = 0;
    let state = 'starting';
    let stallBegan = 0;
    const result = { offset: session.offset, stalls: 0, stalledMs: 0 };
    const socket = net.connect({ host: config.server, port: config.port, localAddress: config.localAddress }, () => socket.write(`${session.offset}\n`));
    socket.on('error', reject);
    socket.on('data', (chunk) => {
      bytes += chunk.length;
      downloaded = mediaAt(session.offset, bytes);
      if (downloaded - playhead >= config.maxBuffer) socket.pause();
    });
    let last = began;
    const tick = setInterval(() => {
      const now = performance.now();
      const elapsed = (now - last) / 1000;
      last = now;
      if (state === 'playing') {
        playhead += elapsed;
        if (playhead >= downloaded) {
          playhead = downloaded;
          state = 'stalled';
          stallBegan = now;
          result.stalls++;
        }
      }
      const ahead = downloaded - playhead;
      if (state === 'starting' && ahead >= config.startBuffer) {
        state = 'playing';
        result.startupMs = Math.round(now - began);
      } else if (state === 'stalled' && ahead >= config.resumeBuffer) {
        state = 'playing';
        result.stalledMs += now - stallBegan;
      }
      if (result.fillMs === undefined && downloaded >= config.fillTarget) result.fillMs = Math.round(now - began);
      if (socket.isPaused() && ahead < config.maxBuffer) socket.resume();
      const done = session.untilFilled ? result.fillMs !== undefined : now - began >= session.wallSeconds * 1000;
      if (!done) return;
      clearInterval(tick);
      if (state === 'stalled') result.stalledMs += now - stallBegan;
      result.stalledMs = Math.round(result.stalledMs);
      result.playedSeconds = Math.round(playhead * 10) / 10;
      result.wallMs = Math.round(now - began);
      socket.destroy();
      resolve(result);
    }, 20);
  });
}
