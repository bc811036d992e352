/** Any operation → the equivalent `tc` command line: for dry runs, logs and docs (and the golden tests). */
import { formatHandle, parseHandle, TC_H_ROOT } from './handle.js';
import { DEFAULT_FILTER_KIND, kindFor } from './registry.js';
import type { ClassRef, ClassSpec, Estimator, FilterProtocol, FilterRef, FilterSpec, Operation, QdiscRef, QdiscSpec, WriteMode } from './types.js';

const modeWord: Record<WriteMode | 'delete', string> = { add: 'add', replace: 'replace', change: 'change', delete: 'del' };

function protocolName(protocol: FilterProtocol): string {
  return typeof protocol === 'number' ? `0x${protocol.toString(16)}` : protocol;
}

const placement = (parent: number): string[] => (parent === TC_H_ROOT ? ['root'] : ['parent', formatHandle(parent)]);
const estimatorWords = (estimator: Estimator | undefined): string[] =>
  estimator ? ['estimator', String(estimator.interval), String(estimator.timeConstant)] : [];

export function qdiscCommand(mode: WriteMode | 'delete', device: string, spec: QdiscSpec | QdiscRef): string {
  const parent = spec.parent === undefined ? TC_H_ROOT : parseHandle(spec.parent);
  const words = ['tc', 'qdisc', modeWord[mode], 'dev', device, ...placement(parent)];
  if (spec.handle !== undefined) words.push('handle', formatHandle(parseHandle(spec.handle)));
  if ('kind' in spec) words.push(...estimatorWords(spec.estimator), spec.kind, ...kindFor('qdisc', spec.kind).tcArguments(spec.options ?? {}));
  return words.join(' ');
}

export function classCommand(mode: WriteMode | 'delete', device: string, spec: ClassSpec | ClassRef): string {
  const words = ['tc', 'class', modeWord[mode], 'dev', device];
  if ('kind' in spec) words.push(...placement(parseHandle(spec.parent)));
  words.push('classid', formatHandle(parseHandle(spec.classid)));
  if ('kind' in spec) words.push(...estimatorWords(spec.estimator), spec.kind, ...kindFor('class', spec.kind).tcArguments(spec.options));
  return words.join(' ');
}

export function filterCommand(mode: WriteMode | 'delete', device: string, spec: FilterSpec | FilterRef): string {
  const words = [
    'tc',
    'filter',
    modeWord[mode],
    'dev',
    device,
    ...placement(parseHandle(spec.parent)),
    'protocol',
    protocolName(spec.protocol),
    'prio',
    String(spec.priority),
  ];
  const kindName = spec.kind ?? (spec.handle === undefined ? undefined : DEFAULT_FILTER_KIND);
  if (spec.handle !== undefined) words.push('handle', typeof spec.handle === 'number' ? kindFor('filter', kindName!).formatHandle(spec.handle) : spec.handle);
  if (kindName) words.push(kindName);
  if ('options' in spec && spec.options !== undefined) words.push(...kindFor('filter', spec.kind).tcArguments(spec.options));
  return words.join(' ');
}

/** The `tc` command line equivalent to an operation. */
export function toTcCommand(device: string, operation: Operation): string {
  if ('qdisc' in operation) return qdiscCommand(operation.op, device, operation.qdisc);
  if ('class' in operation) return classCommand(operation.op, device, operation.class);
  return filterCommand(operation.op, device, operation.filter);
}
