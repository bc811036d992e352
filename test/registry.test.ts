/** The kind registry: one entry per tc kind, its roles named as the kernel names them, and lookups that fail clearly. */
import t from 'tap';
import { operationRequest, toTcCommand } from '../lib/index.js';
import { numericFilterHandle } from '../lib/tc/kind.js';
import { kindFor, knownKind, registeredKinds } from '../lib/tc/registry.js';
import { parsePsched } from '../lib/tc/units.js';

const clock = parsePsched('000003e8 00000040 000f4240 3b9aca00');

t.test('every entry: each role carries the kernel name it is registered under', async (t) => {
  const entries = registeredKinds();
  t.ok(entries.length >= 6, `${entries.length} kinds registered`);
  for (const [name, entry] of entries) {
    const roles = (['qdisc', 'class', 'filter'] as const).filter((role) => entry[role] !== undefined);
    t.ok(roles.length > 0, `${name} plays at least one role`);
    for (const role of roles) t.equal(entry[role]!.name, name, `${name} as ${role}`);
  }
  t.equal(knownKind('class', 'htb')?.name, 'htb');
  t.equal(knownKind('class', 'sfq'), undefined, 'sfq has no class role here');
  t.equal(knownKind('qdisc', 'toString'), undefined, 'only own entries are kinds');
});

t.test('an unknown kind is one error listing what the role supports', async (t) => {
  t.throws(() => kindFor('qdisc', 'cake'), { name: 'ShaperrInputError', message: /unknown qdisc kind "cake": supported are .*htb.*tbf/ });
  t.throws(() => kindFor('filter', 'htb'), { name: 'ShaperrInputError', message: /unknown filter kind "htb": supported are .*u32/ });
  const device = { ifindex: 2, name: 'dev d0' };
  t.throws(() => operationRequest(device, { op: 'add', qdisc: { kind: 'cake' } } as never, { clock }), /unknown qdisc kind "cake"/);
  t.throws(
    () => operationRequest(device, { op: 'delete', filter: { kind: 'bpf', parent: '1:', priority: 1, protocol: 'ip', handle: '1:2:3' } }, { clock }),
    /unknown filter kind "bpf"/,
    'a handle string needs a kind whose syntax we know',
  );
  t.doesNotThrow(
    () => operationRequest(device, { op: 'delete', filter: { kind: 'bpf', parent: '1:', priority: 1, protocol: 'ip', handle: 7 } }, { clock }),
    'a numeric handle needs no syntax',
  );
  t.equal(
    toTcCommand('d0', { op: 'delete', filter: { parent: '1:', priority: 5, protocol: 'ip', handle: 0x0027b001 } }),
    'tc filter del dev d0 parent 1: protocol ip prio 5 handle 2:7b:1 u32',
    'a ref without a kind is u32',
  );
});

t.test('plain numeric filter handles, as tc reads and prints them', async (t) => {
  t.equal(numericFilterHandle.parseHandle('5'), 5);
  t.equal(numericFilterHandle.parseHandle('0x1f'), 31);
  t.equal(numericFilterHandle.formatHandle(31), '0x1f');
  for (const bad of ['', '-1', '0x100000000', '4294967296', '1:2', 'five'])
    t.throws(() => numericFilterHandle.parseHandle(bad), { name: 'ShaperrInputError' }, JSON.stringify(bad));
});
