/**
 * Declarative C structs: a struct is a list of typed fields, and encode, decode and size all derive from
 * that one table (the way pyroute2 describes `tcmsg` options). Field order is the C layout; there is no
 * implicit padding, so padding is declared as a field, exactly as the kernel header has it.
 */

export type ScalarType = 's8' | 'u8' | 'u16' | 'u32' | 's16' | 's32' | 'u64' | 'be16' | 'be32';

interface ScalarSpec {
  readonly type: ScalarType;
}
interface BytesSpec {
  readonly type: 'bytes';
  readonly length: number;
}
interface NestedSpec<T> {
  readonly type: 'struct';
  readonly struct: StructCodec<T>;
}
type FieldSpec = ScalarSpec | BytesSpec | NestedSpec<unknown>;

type FieldValue<S> = S extends { type: 'u64' } ? bigint : S extends { type: 'bytes' } ? Uint8Array : S extends NestedSpec<infer T> ? T : number;

/** The decoded shape of a struct described by `Fields`. */
export type StructValue<Fields extends Record<string, FieldSpec>> = { [K in keyof Fields]: FieldValue<Fields[K]> };

const scalarSize: Record<ScalarType, number> = { s8: 1, u8: 1, u16: 2, u32: 4, s16: 2, s32: 4, u64: 8, be16: 2, be32: 4 };

/** The integers a field can hold. */
export interface IntegerRange {
  readonly min: number;
  readonly max: number;
}

const integerRanges: Record<Exclude<ScalarType, 'u64'>, IntegerRange> = {
  s8: { min: -0x80, max: 0x7f },
  u8: { min: 0, max: 0xff },
  s16: { min: -0x8000, max: 0x7fff },
  u16: { min: 0, max: 0xffff },
  be16: { min: 0, max: 0xffff },
  s32: { min: -0x80000000, max: 0x7fffffff },
  u32: { min: 0, max: 0xffffffff },
  be32: { min: 0, max: 0xffffffff },
};
const U64_MAX = 2n ** 64n - 1n;

/** Whether `value` fits a field of `type`; DataView would silently wrap it instead. */
export function fitsScalar(type: ScalarType, value: unknown): boolean {
  if (type === 'u64') return typeof value === 'bigint' && value >= 0n && value <= U64_MAX;
  const { min, max } = integerRanges[type];
  return typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max;
}

/** The range of an integer scalar type (not u64, whose values are bigints). */
export const integerRange = (type: Exclude<ScalarType, 'u64'>): IntegerRange => integerRanges[type];

/**
 * A value that does not fit its field. Values a user gives are checked (and refused with a message in
 * the user's terms) before they reach a struct, so this means a derived value was not clamped: a bug.
 */
export class FieldRangeError extends RangeError {
  override readonly name = 'FieldRangeError';
  constructor(
    readonly field: string,
    readonly expected: string,
    readonly value: unknown,
  ) {
    super(`${field}: ${String(value)} does not fit ${expected}`);
  }
}

function fieldSize(spec: FieldSpec): number {
  if (spec.type === 'bytes') return spec.length;
  if (spec.type === 'struct') return spec.struct.size;
  return scalarSize[spec.type];
}

export const s8 = { type: 's8' } as const;
export const u8 = { type: 'u8' } as const;
export const u16 = { type: 'u16' } as const;
export const u32 = { type: 'u32' } as const;
export const s16 = { type: 's16' } as const;
export const s32 = { type: 's32' } as const;
export const u64 = { type: 'u64' } as const;
/** Network byte order, as in packet headers and u32 selector keys. */
export const be16 = { type: 'be16' } as const;
export const be32 = { type: 'be32' } as const;
export const bytes = (length: number): BytesSpec => ({ type: 'bytes', length });
export const nested = <T>(struct: StructCodec<T>): NestedSpec<T> => ({ type: 'struct', struct });

export interface StructCodec<T> {
  readonly size: number;
  /** Writes `value` at `offset`; fields left out are zero. */
  encodeInto(view: DataView, offset: number, value: Partial<T>): void;
  encode(value: Partial<T>): Uint8Array;
  /** Reads a struct; a payload shorter than the struct (an older kernel) reads the missing tail as zero. */
  decode(data: Uint8Array): T;
  /** What an integer field holds, so an option written to it can be checked against its declared width. */
  fieldRange(field: keyof T & string): IntegerRange;
}

export function struct<Fields extends Record<string, FieldSpec>>(fields: Fields): StructCodec<StructValue<Fields>> {
  const layout = Object.entries(fields).map(([name, spec]) => ({ name, spec }));
  let size = 0;
  const offsets = layout.map(({ spec }) => {
    const at = size;
    size += fieldSize(spec);
    return at;
  });

  function encodeInto(view: DataView, base: number, value: Record<string, unknown>): void {
    // A plain loop: this runs for every header and struct of every request.
    for (let index = 0; index < layout.length; index++) {
      const { name, spec } = layout[index]!;
      const at = base + offsets[index]!;
      const field = value[name];
      if (field === undefined) continue; // the buffer is zero-filled
      if (spec.type !== 'bytes' && spec.type !== 'struct' && !fitsScalar(spec.type, field)) throw new FieldRangeError(`struct field ${name}`, spec.type, field);
      switch (spec.type) {
        case 's8':
          view.setInt8(at, field as number);
          break;
        case 'u8':
          view.setUint8(at, field as number);
          break;
        case 'u16':
          view.setUint16(at, field as number, true);
          break;
        case 's16':
          view.setInt16(at, field as number, true);
          break;
        case 'u32':
          view.setUint32(at, field as number, true);
          break;
        case 's32':
          view.setInt32(at, field as number, true);
          break;
        case 'u64':
          view.setBigUint64(at, field as bigint, true);
          break;
        case 'be16':
          view.setUint16(at, field as number, false);
          break;
        case 'be32':
          view.setUint32(at, field as number, false);
          break;
        case 'bytes':
          if ((field as Uint8Array).byteLength > spec.length)
            throw new FieldRangeError(`struct field ${name}`, `${spec.length} bytes`, `${(field as Uint8Array).byteLength} bytes`);
          new Uint8Array(view.buffer, view.byteOffset + at, spec.length).set(field as Uint8Array);
          break;
        case 'struct':
          spec.struct.encodeInto(view, at, field as Partial<unknown>);
          break;
      }
    }
  }

  function decodeFrom(view: DataView): StructValue<Fields> {
    const result: Record<string, unknown> = {};
    layout.forEach(({ name, spec }, index) => {
      const at = offsets[index]!;
      switch (spec.type) {
        case 's8':
          result[name] = view.getInt8(at);
          break;
        case 'u8':
          result[name] = view.getUint8(at);
          break;
        case 'u16':
          result[name] = view.getUint16(at, true);
          break;
        case 's16':
          result[name] = view.getInt16(at, true);
          break;
        case 'u32':
          result[name] = view.getUint32(at, true);
          break;
        case 's32':
          result[name] = view.getInt32(at, true);
          break;
        case 'u64':
          result[name] = view.getBigUint64(at, true);
          break;
        case 'be16':
          result[name] = view.getUint16(at, false);
          break;
        case 'be32':
          result[name] = view.getUint32(at, false);
          break;
        case 'bytes':
          result[name] = new Uint8Array(view.buffer, view.byteOffset + at, spec.length).slice();
          break;
        case 'struct':
          result[name] = spec.struct.decode(new Uint8Array(view.buffer, view.byteOffset + at, spec.struct.size));
          break;
      }
    });
    return result as StructValue<Fields>;
  }

  return {
    size,
    encodeInto: (view, offset, value) => encodeInto(view, offset, value as Record<string, unknown>),
    encode(value) {
      const out = new Uint8Array(size);
      encodeInto(new DataView(out.buffer), 0, value as Record<string, unknown>);
      return out;
    },
    fieldRange(field) {
      const spec = fields[field];
      if (!spec || spec.type === 'bytes' || spec.type === 'struct' || spec.type === 'u64')
        throw new TypeError(`struct field ${field} is not a 32-bit-or-narrower integer`);
      return integerRanges[spec.type];
    },
    decode(data) {
      if (data.byteLength >= size) return decodeFrom(new DataView(data.buffer, data.byteOffset, size));
      const padded = new Uint8Array(size);
      padded.set(data);
      return decodeFrom(new DataView(padded.buffer));
    },
  };
}
