// The default engine (app/engine/pricing.py) ported to Node.js, event for event.
//
// The same (scenarioId, seed) gives the same events as the Python engine, down to the bytes of
// the service's canonical JSON. Two things make that more than a transliteration: SplitMix64 and
// the sha256-derived integers need 64 bits (BigInt), and Python writes its floats as floats
// (`10.0`), so the numbers Python computes as floats are wrapped in `Float` and `encode` writes
// them as Python's repr does. Built-in modules only.

import { createHash } from "node:crypto";

export const NAME = "pricing-simulator-node";
export const VERSION = "1.2.0"; // the Python engine's version: the same events

const MASK64 = (1n << 64n) - 1n;
const FIELD = (1n << 21n) - 1n;
const CUSTOMERS = 1000;
const PRICE_LADDER_PERCENT = [70, 80, 90, 100, 110, 120, 130];

// Python's `\s` on str (str.isspace()), which differs from JavaScript's: it has \x1c-\x1f and
// \x85, and not \ufeff. A scenarioId can put any of them into the narration.
const TOKEN = /[^\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;
const LEADING_SPACE = "[\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*";
const PY_TOKEN = new RegExp(LEADING_SPACE + TOKEN.source, "g"); // re.findall(r"\s*\S+", text)

/** A number Python holds as a float: `encode` writes it as Python's repr does. */
export class Float {
  constructor(value) {
    this.value = value;
  }

  valueOf() {
    return this.value;
  }

  toJSON() {
    return this.value;
  }
}

/** Steele, Lea and Flood's SplitMix64 over BigInt, as in the Python engine. */
export class SplitMix64 {
  constructor(seed) {
    this.state = BigInt(seed) & MASK64;
  }

  next() {
    this.state = (this.state + 0x9e3779b97f4a7c15n) & MASK64;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
    return z ^ (z >> 31n);
  }
}

/** The events of one run, each yielded as it is made: the start at once, the rest once the
 * simulation is done. `seed` is a safe integer; `scenarioId` a well-formed string. */
export function* events(scenarioId, seed) {
  const runDigest = sha256(`${scenarioId}:${decimal(seed)}`);
  const sessionId = "session_" + runDigest.subarray(8, 16).toString("hex");
  yield { type: "start", data: { sessionId, scenarioId, seed } };
  const scenario = sha256(scenarioId);
  const reference = 1000 + (scenario.readUInt32BE(0) % 9000); // $10.00 .. $99.99
  const unitCost = floorDiv(reference * (25 + (scenario[4] % 21)), 100); // 25% .. 45% of it
  const rng = new SplitMix64(runDigest.readBigUInt64BE(0));

  // Willingness to pay: the mean of three 21-bit fields of one output, each modulo 121.
  const budgets = new Array(CUSTOMERS);
  for (let i = 0; i < CUSTOMERS; i++) {
    const z = rng.next();
    const draws = Number(z & FIELD) % 121 + Number((z >> 21n) & FIELD) % 121 + Number((z >> 42n) & FIELD) % 121;
    budgets[i] = floorDiv(reference * (40 + floorDiv(draws, 3)), 100);
  }
  budgets.sort((a, b) => a - b);
  const points = PRICE_LADDER_PERCENT.map((percent) =>
    simulate(charmPrice(floorDiv(reference * percent, 100)), unitCost, budgets),
  );
  // max() by (profit, -price): the first of the most profitable, the cheapest among equals.
  let best = points[0];
  for (const point of points) {
    if (point.profit > best.profit || (point.profit === best.profit && point.price < best.price)) best = point;
  }
  const text = narrate(scenarioId, seed, reference, unitCost, points, best);
  const tokens = text.match(PY_TOKEN) ?? [];

  for (const [index, token] of tokens.entries()) {
    yield { type: "token", data: { text: token, tokenIndex: index + 1 } };
  }
  yield { type: "report", data: report(reference, unitCost, points, best) };
  yield { type: "done", data: { sessionId, totalTokens: tokens.length } };
}

function sha256(text) {
  return createHash("sha256").update(Buffer.from(text, "utf8")).digest();
}

/** Python's str(int): `-0` is `0`. */
function decimal(integer) {
  return String(integer === 0 ? 0 : integer);
}

/** Python's `//` on integers (floor, not truncation, for negatives). */
function floorDiv(a, b) {
  return Math.floor(a / b);
}

function charmPrice(cents) {
  return Math.max(99, floorDiv(cents, 100) * 100 - 1);
}

function simulate(price, unitCost, sortedBudgets) {
  // Customers whose budget reaches the price buy one unit.
  const buyers = sortedBudgets.length - bisectLeft(sortedBudgets, price);
  return { price, buyers, revenue: buyers * price, profit: buyers * (price - unitCost) };
}

function bisectLeft(values, target) {
  let low = 0;
  let high = values.length;
  while (low < high) {
    const middle = floorDiv(low + high, 2);
    if (values[middle] < target) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** f"{n:,}" for a non-negative integer. */
function grouped(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function dollars(cents) {
  const sign = cents < 0 ? "-" : "";
  const magnitude = Math.abs(cents);
  return `${sign}$${grouped(floorDiv(magnitude, 100))}.${String(magnitude % 100).padStart(2, "0")}`;
}

function percent(part, whole) {
  const basisPoints = whole ? floorDiv(part * 10_000, whole) : 0;
  const fraction = basisPoints - floorDiv(basisPoints, 100) * 100; // Python's %: never negative here
  return `${floorDiv(basisPoints, 100)}.${String(fraction).padStart(2, "0")}%`;
}

function narrate(scenarioId, seed, reference, unitCost, points, best) {
  const lines = [
    `Based on ${grouped(CUSTOMERS)} simulated customers for scenario ${scenarioId} with seed ${decimal(seed)},` +
      ` I tested ${points.length} price points from ${dollars(points[0].price)}` +
      ` to ${dollars(points.at(-1).price)} against a reference price of ${dollars(reference)}` +
      ` and a unit cost of ${dollars(unitCost)}.`,
  ];
  for (const p of points) {
    lines.push(
      `At ${dollars(p.price)}, ${grouped(p.buyers)} customers buy (${percent(p.buyers, CUSTOMERS)}),` +
        ` earning ${dollars(p.revenue)} revenue and ${dollars(p.profit)} profit.`,
    );
  }
  const above = points.find((p) => p.price > best.price);
  if (above !== undefined) {
    const lost = percent(best.buyers - above.buyers, best.buyers);
    lines.push(`Raising the price from ${dollars(best.price)} to ${dollars(above.price)} loses ${lost} of buyers.`);
  }
  lines.push(
    `Recommendation: price at ${dollars(best.price)} for ${dollars(best.profit)} profit` +
      ` at a ${percent(best.price - unitCost, best.price)} margin; rerun with other seeds to confirm.`,
  );
  return lines.join(" ");
}

/** Python's round(part / whole, 4) for positive integers whose quotient is never a tie at four
 * places: the whole is an odd number of cents (every price ends in 99) or 1,000 customers, so
 * part/whole * 10,000 is never k + 1/2, and the float's error (1e-16) cannot cross a rounding
 * boundary at least 1/(20,000 * whole) away. Rounded on the exact quotient, then divided, which
 * is the float nearest k / 10,000, as Python's round returns. */
function round4(part, whole) {
  return new Float(floorDiv(2 * part * 10_000 + whole, 2 * whole) / 10_000);
}

function cents(value) {
  return new Float(value / 100); // Python's int / int: the correctly rounded quotient, as here
}

function report(reference, unitCost, points, best) {
  const prices = points.map((point) => cents(point.price));
  return {
    customers: CUSTOMERS,
    pricePointsTested: points.length,
    referencePrice: cents(reference),
    unitCost: cents(unitCost),
    bestPrice: cents(best.price),
    buyersAtBestPrice: best.buyers,
    conversionRate: round4(best.buyers, CUSTOMERS),
    revenue: cents(best.revenue),
    profit: cents(best.profit),
    margin: round4(best.price - unitCost, best.price),
    series: [
      { name: "profit", x: "price ($)", y: "profit ($)", points: points.map((p, i) => [prices[i], cents(p.profit)]) },
      { name: "buyers", x: "price ($)", y: "buyers", points: points.map((p, i) => [prices[i], p.buyers]) },
    ],
  };
}

/** Python's repr of a float: the shortest digits that read back (as JavaScript's String finds
 * them), written fixed when the decimal point falls in -4 < decpt <= 16, else as 1e-05, 1e+16. */
export function pythonFloatRepr(value) {
  if (!Number.isFinite(value)) throw new RangeError(`JSON cannot carry ${value}`);
  if (value === 0) return Object.is(value, -0) ? "-0.0" : "0.0";
  const [mantissa, exponent = "0"] = String(Math.abs(value)).split("e");
  const [whole, fraction = ""] = mantissa.split(".");
  // value = 0.<digits> * 10**decpt, Python's convention
  let digits = whole + fraction;
  const leadingZeros = digits.length - digits.replace(/^0+/, "").length;
  digits = digits.slice(leadingZeros).replace(/0+$/, "");
  const decpt = whole.length + Number(exponent) - leadingZeros;
  const sign = value < 0 ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) return `${sign}0.${"0".repeat(-decpt)}${digits}`;
    if (decpt >= digits.length) return `${sign}${digits}${"0".repeat(decpt - digits.length)}.0`;
    return `${sign}${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
  }
  const power = decpt - 1;
  const shown = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  return `${sign}${shown}e${power < 0 ? "-" : "+"}${String(Math.abs(power)).padStart(2, "0")}`;
}

/** One value as JSON, the way Python's json.dumps would have written it: `Float`s as floats,
 * other numbers as integers. Line separators that JSON leaves raw (U+0085, U+2028, U+2029)
 * are escaped, so a line-splitting reader cannot cut a line in two. */
export function encode(value) {
  if (value === null) return "null";
  if (value instanceof Float) return pythonFloatRepr(value.value);
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isSafeInteger(value)) throw new TypeError(`not an integer: ${value}; wrap floats in Float`);
      return decimal(value);
    case "string":
      return JSON.stringify(value).replace(/[\u0085\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
    case "object":
      if (Array.isArray(value)) return `[${value.map(encode).join(",")}]`;
      return `{${Object.entries(value).map(([key, item]) => `${encode(key)}:${encode(item)}`).join(",")}}`;
    default:
      throw new TypeError(`JSON cannot carry a ${typeof value}`);
  }
}

/** The reason a run request's fields are wrong, or null if they are right. */
export function runRequestProblem(scenarioId, seed) {
  if (typeof scenarioId !== "string" || scenarioId === "") return "scenarioId must be a non-empty string";
  if (!scenarioId.isWellFormed()) return "scenarioId must be well-formed Unicode (no lone surrogates)";
  if (!Number.isSafeInteger(seed)) return "seed must be an integer from -9007199254740991 to 9007199254740991";
  return null;
}
