/**
 * matchall: the filter that matches every packet of its protocol, e.g. to send all of a device's
 * traffic to one class. Encoded as iproute2 6.1's f_matchall.c: no TCA_OPTIONS without options,
 * otherwise the class id, then the flags. Handles are plain numbers. Actions are not offered.
 */
import { attr, attributeSet, attrU32 } from '../../wire/attributes.js';
import { ShaperrInputError } from '../../wire/errors.js';
import { struct, u64 } from '../../wire/struct.js';
import { formatHandle, type HandleInput, parseHandle } from '../handle.js';
import { defineKind, type FilterKind, numericFilterHandle, writeNestedOptions } from '../kind.js';

// In tc's write order.
const matchallAttributes = attributeSet({
  classid: attr(1, attrU32),
  flags: attr(3, attrU32),
  hits: attr(4, struct({ rhit: u64 })),
});

// TCA_CLS_FLAGS_* (pkt_cls.h).
const SKIP_HW = 1;
const SKIP_SW = 2;
const IN_HW = 4;

export interface MatchallOptions {
  /** The class every packet goes to (tc's classid/flowid). */
  classid?: HandleInput;
  /** Keep the filter out of the NIC (software only). */
  skipHw?: boolean;
  /** Only in the NIC (needs a device that offloads it). */
  skipSw?: boolean;
}

export interface MatchallParameters extends MatchallOptions {
  classid?: number;
  /** Read back only: the NIC runs the filter. */
  inHardware?: boolean;
  /** Read back only: packets matched so far. */
  hits?: number;
}

export const matchallFilter: FilterKind<MatchallOptions, MatchallParameters> = {
  name: 'matchall',
  ...numericFilterHandle,
  resolve(input) {
    if (input.skipHw && input.skipSw) throw new ShaperrInputError('invalid matchall options: skipHw and skipSw together would leave the filter nowhere');
    const parameters: MatchallParameters = {};
    if (input.classid !== undefined) parameters.classid = parseHandle(input.classid);
    if (input.skipHw) parameters.skipHw = true;
    if (input.skipSw) parameters.skipSw = true;
    return parameters;
  },
  write(writer, parameters) {
    const flags = (parameters.skipHw ? SKIP_HW : 0) | (parameters.skipSw ? SKIP_SW : 0);
    // tc sends no options at all for a bare `… matchall`.
    if (parameters.classid === undefined && !flags) return;
    writeNestedOptions(writer, () => matchallAttributes.write(writer, { classid: parameters.classid, flags: flags || undefined }));
  },
  read(payload) {
    const { classid, flags = 0, hits } = matchallAttributes.read(payload ?? new Uint8Array());
    const parameters: MatchallParameters = {};
    if (classid !== undefined) parameters.classid = classid;
    if (flags & SKIP_HW) parameters.skipHw = true;
    if (flags & SKIP_SW) parameters.skipSw = true;
    if (flags & IN_HW) parameters.inHardware = true;
    if (hits !== undefined) parameters.hits = Number(hits.rhit);
    return parameters;
  },
  tcArguments(input) {
    // Flags first: tc 6.1 wants another argument after skip_hw/skip_sw (the bytes do not depend on the order).
    const args: string[] = [];
    if (input.skipHw) args.push('skip_hw');
    if (input.skipSw) args.push('skip_sw');
    if (input.classid !== undefined) args.push('classid', typeof input.classid === 'number' ? formatHandle(input.classid) : input.classid);
    return args;
  },
};

export const matchall = defineKind({ filter: matchallFilter });
