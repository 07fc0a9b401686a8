// The pricing engine as an HTTP engine: GET /describe, POST /run answering Server-Sent Events or
// NDJSON, each event sent as soon as it is made; the end of the response is the end of the run.
//
//   node http-engine.mjs --port 8765 [--host 127.0.0.1] [--delay-ms 50]
//
// With ENGINE_TOKEN set, every request needs `Authorization: Bearer <ENGINE_TOKEN>`.

import { createHash, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import { NAME, VERSION, encode, events, runRequestProblem } from "./pricing.mjs";

const MAX_BODY_BYTES = 64 * 1024;
const STOP_GRACE_MS = 5_000; // how long a run in flight may finish after SIGTERM

// The engine's identity is its code: a redeploy with edited code publishes another digest.
const CODE_DIGEST = "sha256:" + createHash("sha256")
  .update(readFileSync(fileURLToPath(new URL("./pricing.mjs", import.meta.url))))
  .update(readFileSync(fileURLToPath(import.meta.url)))
  .digest("hex");

class HttpError extends Error {
  constructor(status, message, headers = {}) {
    super(message);
    this.status = status;
    this.headers = headers;
  }
}

function options() {
  try {
    const { values } = parseArgs({
      options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" }, "delay-ms": { type: "string", default: "0" } },
    });
    const port = Number(values.port);
    const delay = Number(values["delay-ms"]);
    if (values.port === undefined || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error("--port must be 0 to 65535");
    if (!Number.isFinite(delay) || delay < 0) throw new Error("--delay-ms must be a non-negative number");
    const token = process.env.ENGINE_TOKEN;
    if (token === "") throw new Error("ENGINE_TOKEN is set but empty: unset it, or give it a secret");
    return { port, host: values.host, delay, token };
  } catch (error) {
    process.stderr.write(`http-engine: ${error.message}\nusage: node http-engine.mjs --port N [--host 127.0.0.1] [--delay-ms D]\n`);
    process.exit(2);
  }
}

const { port, host, delay, token } = options();
const expected = token === undefined ? null : digest(`Bearer ${token}`);

function digest(text) {
  return createHash("sha256").update(text).digest();
}

function authorize(request) {
  if (expected === null) return;
  const given = (request.headers.authorization ?? "").replace(/^bearer\s+/i, "Bearer ");
  // Digests of equal length, compared in constant time: the answer's timing says nothing of the token.
  if (!timingSafeEqual(digest(given), expected)) {
    throw new HttpError(401, "a valid bearer token is required", { "WWW-Authenticate": "Bearer" });
  }
}

async function readBody(request) {
  if (Number(request.headers["content-length"] ?? 0) > MAX_BODY_BYTES) {
    throw new HttpError(413, `the body must be at most ${MAX_BODY_BYTES} bytes`, { Connection: "close" });
  }
  const chunks = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `the body must be at most ${MAX_BODY_BYTES} bytes`, { Connection: "close" });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function parseRun(body) {
  let run;
  try {
    run = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new HttpError(400, 'the body must be JSON: {"scenarioId": string, "seed": integer}');
  }
  if (run === null || typeof run !== "object" || Array.isArray(run)) {
    throw new HttpError(400, 'the body must be a JSON object: {"scenarioId": string, "seed": integer}');
  }
  const problem = runRequestProblem(run.scenarioId, run.seed);
  if (problem) throw new HttpError(400, problem);
  return run;
}

/** Whether the Accept header names application/x-ndjson and not text/event-stream (q=0 names nothing). */
function wantsNdjson(accept = "") {
  const named = new Set();
  for (const range of accept.split(",")) {
    const [type, ...parameters] = range.split(";").map((part) => part.trim().toLowerCase());
    if (!parameters.some((parameter) => /^q=0(\.0*)?$/.test(parameter))) named.add(type);
  }
  return named.has("application/x-ndjson") && !named.has("text/event-stream");
}

async function run(request, response) {
  const { scenarioId, seed } = parseRun(await readBody(request));
  const ndjson = wantsNdjson(request.headers.accept);
  response.writeHead(200, {
    "Content-Type": ndjson ? "application/x-ndjson" : "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no", // a proxy in front passes each event on at once
  });
  response.flushHeaders();
  for (const event of events(scenarioId, seed)) {
    if (delay > 0) await sleep(delay);
    if (response.destroyed) return; // the client left: no one to run for
    const message = ndjson ? `${encode(event)}\n` : `event: ${event.type}\ndata: ${encode(event.data)}\n\n`;
    if (!response.write(message)) await new Promise((resolve) => {
      response.once("drain", resolve);
      response.once("close", resolve);
    });
  }
  response.end();
}

async function handle(request, response) {
  authorize(request);
  const path = new URL(request.url, "http://engine").pathname;
  const routes = { "/describe": "GET", "/run": "POST" };
  if (!(path in routes)) throw new HttpError(404, `no such path: ${path}`);
  if (request.method !== routes[path]) throw new HttpError(405, `${path} answers ${routes[path]} only`, { Allow: routes[path] });
  if (path === "/describe") return answer(response, 200, { name: NAME, version: VERSION, codeDigest: CODE_DIGEST });
  return run(request, response);
}

function answer(response, status, body, headers = {}) {
  response.writeHead(status, { "Content-Type": "application/json", ...headers });
  response.end(JSON.stringify(body));
}

const server = createServer({ noDelay: true }, (request, response) => {
  handle(request, response).catch((error) => {
    if (response.headersSent) {
      // Mid-stream: break the response rather than end it, or the client would take a
      // truncated run for a whole one.
      response.destroy(error);
    } else if (error instanceof HttpError) {
      answer(response, error.status, { message: error.message }, error.headers);
    } else {
      process.stderr.write(`http-engine: ${error.stack}\n`);
      answer(response, 500, { message: "the engine failed" });
    }
  });
});

let stopping = false;
function stop() {
  if (stopping) return server.closeAllConnections(); // a second signal: do not wait
  stopping = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => server.closeAllConnections(), STOP_GRACE_MS).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.on("error", (error) => {
  process.stderr.write(`http-engine: ${error.message}\n`);
  process.exit(1);
});
server.listen(port, host, () => {
  const shown = host.includes(":") ? `[${host}]` : host;
  process.stdout.write(`listening on http://${shown}:${server.address().port}\n`);
});
