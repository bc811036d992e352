/**
 * `rate: auto` from the log source: the real shaperrd process follows a log the test appends real Plex
 * request lines to; a transcode request's maxVideoBitrate × headroom becomes the client's class rate,
 * read back from the kernel in a throwaway netns. Without a cap the pipe gets max.
 */
import { appendFileSync } from 'node:fs';
import t from 'tap';
import { kernelClientClasses, logDir, plexLine, startDaemon, until, writeDaemonConfig } from './helpers/daemon.js';
import { createTopology, netnsUnavailable } from '../daemon/support/netns.js';

const skip = netnsUnavailable();
const MBIT = 1e6;

t.test('the log’s maxVideoBitrate sizes the pipe: cap × headroom, changed in place on a new cap, max without one', { skip }, async (t) => {
  const topology = await createTopology({ clients: 2, ipv6: false });
  t.teardown(() => topology.destroy());
  const [capped, uncapped] = topology.clientAddresses as [string, string];
  const { dir, log } = logDir(t, 'shaperr-maxbitrate');
  const config = writeDaemonConfig(dir, {
    netns: topology.serverNs,
    client: { rate: 'auto', headroom: 1.25, min: '1mbit', max: '12mbit' },
    source: 'log',
    log,
    graceSeconds: 1,
    idleSeconds: 600,
  });
  const daemon = startDaemon(config);
  t.teardown(() => daemon.child.kill('SIGKILL'));
  await daemon.waitFor(/shaperrd started/);

  const decision = (session: string, kbit: number) =>
    plexLine(
      capped,
      `/video/:/transcode/universal/decision?directPlay=0&directStream=1&hasMDE=1&location=wan&maxVideoBitrate=${kbit}&mediaBufferSize=102400&path=%2Flibrary%2Fmetadata%2F40859&protocol=dash&session=${session}&videoResolution=1280x720&X-Plex-Token=tok`,
    );
  appendFileSync(log, decision('cap-1', 4000) + plexLine(capped, '/video/:/transcode/universal/start.mpd?session=cap-1&maxVideoBitrate=4000&X-Plex-Token=tok'));
  const throttled = await daemon.waitFor(/decision throttle 10\.200\.1\.1/);
  t.match(throttled, /auto: 4\.00 Mbit\/s maxVideoBitrate of the transcode request × 1\.25 = 5\.00 Mbit\/s/, 'the decision line says which rate and why');
  await until(() => kernelClientClasses(topology).length === 1);
  t.same(kernelClientClasses(topology), [{ rate: 5 * MBIT, ceil: 12 * MBIT }], '4000 kbit/s × 1.25: a 5 Mbit/s class, ceil = max');

  // The viewer picks another quality: Plex starts the transcode again under the same session.
  appendFileSync(log, decision('cap-1', 8000));
  await daemon.waitFor(/decision change 10\.200\.1\.1/);
  await until(() => kernelClientClasses(topology)[0]?.rate === 10 * MBIT);
  t.same(kernelClientClasses(topology), [{ rate: 10 * MBIT, ceil: 12 * MBIT }], 'the class changed in place to 8 × 1.25 = 10 Mbit/s');

  appendFileSync(log, plexLine(uncapped, '/library/parts/123/1690000000/file.mkv?X-Plex-Client-Identifier=tv-9'));
  const direct = await daemon.waitFor(/decision throttle 10\.200\.1\.2/);
  t.match(direct, /stream need unknown, max rate/, 'direct play through the log: no cap, the pipe gets max');
  await until(() => kernelClientClasses(topology).length === 2);
  t.same(
    kernelClientClasses(topology)
      .map((c) => c.rate)
      .sort((a, b) => a - b),
    [10 * MBIT, 12 * MBIT],
  );
  t.notOk(
    daemon.output.some((line) => /X-Plex-Token|tok&/.test(line)),
    'no token in the daemon’s output',
  );
});
