/**
 * What the operator's tool does next to a Shaper, without being one: read what shaperr has on a device
 * (status, tc), remove it (clear), and check that a device and kernel can carry it (check).
 */
import type { ProgressListener } from '../progress.js';
import { TC_H_ROOT } from '../tc/handle.js';
import { TrafficControl } from '../tc/traffic-control.js';
import type { Operation } from '../tc/types.js';
import { ShaperrInputError } from '../wire/errors.js';
import { removeRootDraining } from './drain.js';
import { liveKernel, readOnlyKernel } from './kernel.js';
import { clientFilterRef, describeQdisc, isShaperRoot, readClientFilter, SHAPER_LAYOUT, SHAPER_ROOT, SHAPER_SERVER_CLASS } from './layout.js';
import { type LeafKind, Shaper, type ShaperView } from './shaper.js';

export interface DeviceOptions {
  device: string;
  /** Network namespace of the device (name under /var/run/netns, or a path). */
  netns?: string;
}

const openTrafficControl = (options: DeviceOptions): TrafficControl => TrafficControl.open(options.netns ? { netns: options.netns } : {});

/**
 * A read-only view of what shaperr has on a device (for `shaperr status` and `shaperr tc`, next to a
 * running daemon): undefined when the device has no shaperr root qdisc. Changes nothing in the kernel.
 */
export function inspectShaper(options: DeviceOptions): ShaperView | undefined {
  const tc = openTrafficControl(options);
  try {
    const root = tc.rootQdisc(options.device);
    const server = tc.classes(options.device).find((tcClass) => tcClass.handle === SHAPER_SERVER_CLASS);
    if (!isShaperRoot(root) || !server) {
      tc.close();
      return undefined;
    }
    const leaves = tc.qdiscs(options.device).filter((qdisc) => qdisc.parent !== TC_H_ROOT && qdisc.parent >>> 16 === SHAPER_LAYOUT.rootMajor);
    const leaf: LeafKind = leaves[0]?.kind === 'sfq' ? 'sfq' : leaves.length ? 'bfifo' : 'none';
    const limits = { rate: server.parameters.rate, ceil: server.parameters.ceil };
    // Gateway mode shows in the filters themselves, each with its server's port: the view adopts each
    // filter's own, and `shaperr tc` prints them as they are.
    const sourcePort = tc
      .filters(options.device, SHAPER_ROOT)
      .map(readClientFilter)
      .find((client) => client)?.sourcePort;
    const shaperOptions = { device: options.device, server: limits, client: limits, ...(sourcePort === undefined ? {} : { sourcePort }), onWarning: () => {} };
    return Shaper.view(readOnlyKernel(tc, options.device), shaperOptions, leaf);
  } catch (error) {
    tc.close();
    throw error;
  }
}

/**
 * Removes everything shaperr made on a device (one root qdisc delete takes every class, leaf and filter
 * with it), dropping nothing queued. Returns how many client pipes went, undefined when shaperr had
 * nothing there. A root qdisc shaperr did not create is left alone with an error.
 */
export async function clearShaper(options: DeviceOptions & { onProgress?: ProgressListener }): Promise<number | undefined> {
  const kernel = liveKernel(openTrafficControl(options), options.device);
  try {
    const root = kernel.rootQdisc();
    if (!root) return undefined;
    if (!isShaperRoot(root)) {
      throw new ShaperrInputError(`the root qdisc on ${options.device} is ${describeQdisc(root)}, not shaperr's; not touching it`);
    }
    const classes = kernel.classes();
    const pipes = classes.filter((tcClass) => tcClass.parent === SHAPER_SERVER_CLASS).length;
    const server = classes.find((tcClass) => tcClass.handle === SHAPER_SERVER_CLASS);
    // A handful of kernel calls however many pipes: progress is "about to" and "done".
    options.onProgress?.({ done: 0, total: pipes });
    const apply = (operations: Operation[]) => {
      const failed = kernel.batch(operations).find((result) => result.error);
      if (failed) throw failed.error;
    };
    await removeRootDraining(kernel, apply, {
      open: (busy) =>
        busy.flatMap((tcClass): Operation[] => {
          if (!server) return [];
          const { rate, quantum } = tcClass.parameters;
          const options = { rate, ceil: Math.max(rate, server.parameters.rate), quantum };
          return [{ op: 'change', class: { kind: 'htb', parent: SHAPER_SERVER_CLASS, classid: tcClass.handle, options } }];
        }),
      unsteer: () =>
        kernel.filters(SHAPER_ROOT).flatMap((filter): Operation[] => {
          const client = readClientFilter(filter);
          return client ? [{ op: 'delete', filter: clientFilterRef(SHAPER_ROOT, client.address, client.node), ifPresent: true }] : [];
        }),
    });
    options.onProgress?.({ done: pipes, total: pipes });
    return pipes;
  } finally {
    kernel.close();
  }
}

/** What `checkDevice` found: the facts behind `shaperr check`'s device and kernel lines. */
export interface DeviceCheck {
  mtu: number;
  /** `none`: shaperr will add its own; `foreign`: another tool's root, described as tc writes it (`tbf 1:`). */
  root: { state: 'none' } | { state: 'shaperr' } | { state: 'foreign'; description: string };
  /** Whether the kernel has the qdisc kinds shaperr uses (only with `probeKinds`: probing needs CAP_NET_ADMIN). */
  qdiscKinds?: { htb: boolean; sfq: boolean };
  /** Whether the kernel has the u32 filter: probed on shaperr's own root qdisc, so only when it is there (and with `probeKinds`). */
  u32?: boolean;
}

/** Looks at a device as shaperrd would use it; a missing device throws the kernel's ENODEV. */
export function checkDevice(options: DeviceOptions & { probeKinds: boolean }): DeviceCheck {
  const tc = openTrafficControl(options);
  try {
    const mtu = tc.link(options.device).mtu;
    const root = tc.rootQdisc(options.device);
    const ours = isShaperRoot(root);
    const check: DeviceCheck = { mtu, root: !root ? { state: 'none' } : ours ? { state: 'shaperr' } : { state: 'foreign', description: describeQdisc(root) } };
    if (options.probeKinds) {
      check.qdiscKinds = { htb: tc.hasQdiscKind('htb'), sfq: tc.hasQdiscKind('sfq') };
      if (ours) check.u32 = tc.hasFilterKind('u32', options.device, SHAPER_ROOT);
    }
    return check;
  } finally {
    tc.close();
  }
}
