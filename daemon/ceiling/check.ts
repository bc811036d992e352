/**
 * `shaperr check` for the automatic ceiling: which signal it will follow, whether that signal can be
 * read here, and why not when it cannot.
 */
import { SocketDiag } from '../../lib/index.js';
import { type AutoCeilingConfig, autoCeilingConfig, type ShaperrConfig } from '../config.js';
import { UdpProbe } from './udp-probe.js';

export interface CeilingCheckLine {
  verdict: 'ok' | 'warn' | 'fail';
  what: string;
  fix?: string;
}

/** How long the check listens for the probe's answers. */
const PROBE_CHECK_MS = 1500;

export async function checkCeiling(config: ShaperrConfig): Promise<CeilingCheckLine[]> {
  const auto = autoCeilingConfig(config);
  if (!auto) return [{ verdict: 'ok', what: `server ceiling fixed (rate: auto would follow the uplink by itself)` }];
  const lines: CeilingCheckLine[] = [
    {
      verdict: 'ok',
      what: `automatic server ceiling between ${auto.min / 1e6} and ${auto.max / 1e6} Mbit/s, following ${auto.signal === 'plex' ? "Plex's own connections" : `the UDP probe to ${auto.probe!.text}`}${config.gateway ? ' (gateway mode: Plex is on another host)' : ''}`,
    },
  ];
  lines.push(
    config.gateway
      ? { verdict: 'ok', what: "Plex's connections: not readable in gateway mode (they are on another host); the probe is the signal" }
      : plexSignal(config, auto.plexPort),
  );
  if (auto.probe) lines.push(await probeSignal(auto));
  return lines;
}

function plexSignal(config: ShaperrConfig, port: number): CeilingCheckLine {
  let diag: SocketDiag | undefined;
  try {
    diag = SocketDiag.open(config.netns ? { netns: config.netns } : {});
    const sockets = diag.tcpSockets({ localPort: port });
    return {
      verdict: sockets.length ? 'ok' : 'warn',
      what: `Plex's connections (sock_diag, local port ${port}): ${sockets.length} open now`,
      ...(sockets.length ? {} : { fix: `nothing on port ${port} yet: fine while nothing plays; if Plex listens elsewhere, give plex.url its port` }),
    };
  } catch (error) {
    return {
      verdict: 'fail',
      what: `Plex's connections cannot be read (sock_diag): ${(error as Error).message}`,
      fix: 'the kernel needs inet_diag/tcp_diag (CONFIG_INET_DIAG); or use the probe: signal: probe, probe: address:port',
    };
  } finally {
    diag?.close();
  }
}

async function probeSignal(auto: AutoCeilingConfig): Promise<CeilingCheckLine> {
  const probe = new UdpProbe(auto.probe!);
  probe.start();
  await new Promise((resolve) => setTimeout(resolve, PROBE_CHECK_MS));
  const { sent, answered } = probe.counts;
  probe.stop();
  return answered
    ? { verdict: 'ok', what: `the UDP probe to ${auto.probe!.text} answered ${answered} of ${sent}` }
    : {
        verdict: auto.signal === 'probe' ? 'fail' : 'warn',
        what: `the UDP probe to ${auto.probe!.text} got no answer (${sent} sent)`,
        fix: 'run a UDP echo service there (port 7, e.g. inetd or socat) on a host beyond your modem, and let its firewall answer',
      };
}
