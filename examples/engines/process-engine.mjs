// The pricing engine as a process engine (protocol run-registry-engine/1): one JSON request line
// on stdin, the events on stdout as JSON Lines, each written as soon as it is made.
//
//   echo '{"protocol": "run-registry-engine/1", "op": "run", "scenarioId": "pricing-v1", "seed": 42}' \
//     | node process-engine.mjs
//
// PRICING_EVENT_DELAY_MS (optional) pauses before each event, so a run can be watched live.

import { setTimeout as sleep } from "node:timers/promises";

import { NAME, VERSION, encode, events, runRequestProblem } from "./pricing.mjs";

const PROTOCOL = "run-registry-engine/1";
const MAX_REQUEST_BYTES = 64 * 1024; // a request is one short line; more is not a request
const BAD_REQUEST = 2;
const BROKEN_PIPE = 141; // what a shell reports for a writer ended by SIGPIPE: the reader left

class BadRequest extends Error {}

process.stdout.on("error", (error) => {
  // The reader has gone (the service stopped the run): nobody is left to tell.
  process.exit(error.code === "EPIPE" ? BROKEN_PIPE : 1);
});

async function readStdin() {
  const chunks = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += chunk.length;
    if (size > MAX_REQUEST_BYTES) throw new BadRequest(`the request is over ${MAX_REQUEST_BYTES} bytes`);
    chunks.push(chunk);
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Buffer.concat(chunks));
  } catch {
    throw new BadRequest("the request is not UTF-8");
  }
}

function parseRequest(text) {
  const line = text.replace(/\r?\n$/, "");
  if (line.includes("\n")) throw new BadRequest("the request must be one line of JSON");
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    throw new BadRequest(`the request is not JSON: ${error.message}`);
  }
  if (request === null || typeof request !== "object" || Array.isArray(request)) {
    throw new BadRequest("the request must be a JSON object");
  }
  if (request.protocol !== PROTOCOL) throw new BadRequest(`protocol must be "${PROTOCOL}"`);
  if (request.op === "describe") return request;
  if (request.op !== "run") throw new BadRequest('op must be "run" or "describe"');
  const problem = runRequestProblem(request.scenarioId, request.seed);
  if (problem) throw new BadRequest(problem);
  return request;
}

function eventDelayMs() {
  const raw = process.env.PRICING_EVENT_DELAY_MS;
  if (raw === undefined || raw === "") return 0;
  const delay = Number(raw);
  if (!Number.isFinite(delay) || delay < 0) {
    throw new BadRequest(`PRICING_EVENT_DELAY_MS must be a non-negative number of milliseconds, not ${JSON.stringify(raw)}`);
  }
  return delay;
}

async function writeLine(text) {
  if (!process.stdout.write(text + "\n")) await new Promise((resolve) => process.stdout.once("drain", resolve));
}

async function main() {
  let request;
  let delay;
  try {
    delay = eventDelayMs();
    request = parseRequest(await readStdin());
  } catch (error) {
    if (!(error instanceof BadRequest)) throw error;
    process.stderr.write(`process-engine: ${error.message}\n`);
    process.exitCode = BAD_REQUEST;
    return;
  }
  if (request.op === "describe") {
    await writeLine(encode({ name: NAME, version: VERSION }));
    return;
  }
  for (const event of events(request.scenarioId, request.seed)) {
    if (delay > 0) await sleep(delay);
    await writeLine(encode(event));
  }
}

await main();
