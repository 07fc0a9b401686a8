// An OpenAI-compatible chat completions server over node-llama-cpp's prebuilt CPU llama.cpp, for
// tests: one model file, one context sequence, one thread, requests served one at a time.
//
//   node server.mjs --model PATH --port N [--host 127.0.0.1] [--ignore-seed] [--api-key K]
//                   [--node-modules DIR] [--token-delay-ms D] [--chunk-times FILE]
//
// --token-delay-ms pauses before each content chunk (a big model's pace, so a client watches the
// text arrive); --chunk-times appends "<seed> <n> <epoch ms>" to FILE as each content chunk is
// written (the benchmark's start of an event's way to a live client).
//
// Prints exactly one line, "listening on http://HOST:PORT", to stdout once it serves; logs go to
// stderr. --node-modules names the node_modules directory that holds node-llama-cpp (an ES
// module's imports ignore NODE_PATH); without it the import resolves from this file's folder.

import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import { appendFileSync, createReadStream, existsSync, readFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const MAX_BODY_BYTES = 1 << 20;
const DEFAULT_MAX_TOKENS = 256;
const MAX_CONTEXT = 4096;

const { values: args } = parseArgs({
    options: {
        model: { type: "string" },
        port: { type: "string" },
        host: { type: "string", default: "127.0.0.1" },
        "ignore-seed": { type: "boolean", default: false },
        "api-key": { type: "string" },
        "node-modules": { type: "string" },
        "token-delay-ms": { type: "string", default: "0" },
        "chunk-times": { type: "string" },
    },
});
if (!args.model || args.port === undefined || !/^\d+$/.test(args.port)) {
    process.stderr.write("usage: node server.mjs --model PATH --port N [--host H] [--ignore-seed] [--api-key K]\n");
    process.exit(2);
}

// Exit at once on a stop signal: nothing here needs tidying, and a test stops us by PID.
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));

const { getLlama, LlamaLogLevel } = await import(args["node-modules"]
    ? pathToFileURL(path.join(args["node-modules"], "node-llama-cpp", "dist", "index.js")).href
    : "node-llama-cpp");

const modelPath = path.resolve(args.model);
const modelId = path.basename(modelPath);
const modelDigest = `sha256:${await sha256File(modelPath)}`;

const llama = await getLlama({
    gpu: false,
    build: "never", // the prebuilt binary or nothing: never compile, never download
    skipDownload: true,
    progressLogs: false,
    maxThreads: 1, // two threads on a two-core box are 10-40x slower than one
    logLevel: LlamaLogLevel.warn,
    logger: (level, message) => process.stderr.write(`llama.cpp ${level}: ${message.trimEnd()}\n`),
});
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const context = await model.createContext({
    contextSize: Math.min(model.trainContextSize, MAX_CONTEXT),
    sequences: 1,
    threads: 1,
});
const sequence = context.getSequence();
const systemFingerprint = fingerprint(llama);

// ---- the runtime's identity

/** "b<build>-<commit>-<cpu variant>": llama.cpp's own build number and commit, read from the
 * library node-llama-cpp loaded, and the CPU kernel library ggml chose for this processor. */
function fingerprint(runtime) {
    const libraries = loadedLibraries();
    const variant = libraries.map((file) => /libggml-cpu-(.+)\.so$/.exec(path.basename(file))?.[1]).find(Boolean)
        ?? "cpu";
    const common = libraries.map((file) => path.join(path.dirname(file), "libllama-common.so")).find(existsSync);
    try {
        const build = readElfSymbols(common, ["LLAMA_BUILD_NUMBER", "LLAMA_COMMIT"]);
        return `b${build.LLAMA_BUILD_NUMBER}-${build.LLAMA_COMMIT}-${variant}`;
    } catch (error) {
        // What node-llama-cpp says of itself, when the library cannot be read.
        process.stderr.write(`fingerprint: no build info in ${common}: ${error.message}\n`);
        return `${runtime.llamaCppRelease.release}-${variant}`;
    }
}

/** The shared libraries of llama.cpp this process has mapped (Linux /proc). */
function loadedLibraries() {
    const files = readFileSync("/proc/self/maps", "utf8").split("\n")
        .map((line) => line.split(/\s+/).slice(5).join(" "))
        .filter((file) => /\/(libggml|libllama|llama-addon)[^/]*$/.test(file));
    return [...new Set(files)];
}

/** Read an int and a string constant that llama.cpp's common library exports (ELF64, little
 * endian): LLAMA_BUILD_NUMBER is an int in .data, LLAMA_COMMIT a pointer to a string. */
function readElfSymbols(file, names) {
    const elf = readFileSync(file);
    if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) throw new Error("not a 64-bit little-endian ELF");
    const sections = [];
    for (let i = 0, shoff = Number(elf.readBigUInt64LE(0x28)); i < elf.readUInt16LE(0x3c); i++) {
        const at = shoff + i * elf.readUInt16LE(0x3a);
        sections.push({
            type: elf.readUInt32LE(at + 4), addr: Number(elf.readBigUInt64LE(at + 16)),
            offset: Number(elf.readBigUInt64LE(at + 24)), size: Number(elf.readBigUInt64LE(at + 32)),
            link: elf.readUInt32LE(at + 40),
        });
    }
    const fileOffset = (address) => {
        const section = sections.find((s) => s.type !== 8 /* NOBITS */ && s.addr && address >= s.addr && address < s.addr + s.size);
        if (!section) throw new Error(`address ${address} is in no section`);
        return section.offset + address - section.addr;
    };
    const cString = (at) => elf.toString("latin1", at, elf.indexOf(0, at));
    // A pointer in a shared library is relocated at load: its target is the RELATIVE addend.
    const relocated = new Map();
    for (const rela of sections.filter((s) => s.type === 4 /* RELA */)) {
        for (let at = rela.offset; at < rela.offset + rela.size; at += 24) {
            if ((elf.readBigUInt64LE(at + 8) & 0xffffffffn) === 8n /* R_X86_64_RELATIVE */)
                relocated.set(Number(elf.readBigUInt64LE(at)), Number(elf.readBigInt64LE(at + 16)));
        }
    }
    const dynsym = sections.find((s) => s.type === 11 /* DYNSYM */);
    const dynstr = sections[dynsym.link];
    const found = {};
    for (let at = dynsym.offset; at < dynsym.offset + dynsym.size; at += 24) {
        const name = cString(dynstr.offset + elf.readUInt32LE(at));
        if (!names.includes(name) || name in found) continue;
        const address = Number(elf.readBigUInt64LE(at + 8));
        found[name] = name === "LLAMA_BUILD_NUMBER"
            ? elf.readInt32LE(fileOffset(address))
            : cString(fileOffset(relocated.get(address) ?? Number(elf.readBigUInt64LE(fileOffset(address)))));
    }
    for (const name of names) if (!(name in found)) throw new Error(`no symbol ${name}`);
    return found;
}

function sha256File(file) {
    return new Promise((resolve, reject) => {
        const hash = createHash("sha256");
        createReadStream(file).on("error", reject).on("data", (data) => hash.update(data))
            .on("end", () => resolve(hash.digest("hex")));
    });
}

// ---- requests

class ApiError extends Error {
    constructor(status, message, code = null) {
        super(message);
        this.status = status;
        this.code = code;
    }
}

/** Check a chat completion request the way OpenAI's API does, the fields this server knows. */
function parseRequest(body) {
    if (body === null || typeof body !== "object" || Array.isArray(body)) throw new ApiError(400, "The body must be a JSON object.");
    if (typeof body.model !== "string") throw new ApiError(400, "'model' is required and must be a string.");
    if (body.model !== modelId) throw new ApiError(404, `The model '${body.model}' does not exist.`, "model_not_found");
    const { messages } = body;
    if (!Array.isArray(messages) || messages.length === 0) throw new ApiError(400, "'messages' must be a non-empty array.");
    for (const [i, message] of messages.entries()) {
        if (message === null || typeof message !== "object" || !["system", "user", "assistant"].includes(message.role))
            throw new ApiError(400, `messages[${i}].role must be one of system, user, assistant.`);
        if (typeof message.content !== "string") throw new ApiError(400, `messages[${i}].content must be a string.`);
    }
    const number = (name, low, high, fallback) => {
        const value = body[name];
        if (value === undefined || value === null) return fallback;
        if (typeof value !== "number" || !Number.isFinite(value) || value < low || value > high)
            throw new ApiError(400, `'${name}' must be a number from ${low} to ${high}.`);
        return value;
    };
    const integer = (name, low, fallback) => {
        const value = body[name];
        if (value === undefined || value === null) return fallback;
        if (!Number.isSafeInteger(value) || value < low) throw new ApiError(400, `'${name}' must be an integer of at least ${low}.`);
        return value;
    };
    let stop = body.stop ?? [];
    if (typeof stop === "string") stop = [stop];
    if (!Array.isArray(stop) || stop.length > 4 || stop.some((s) => typeof s !== "string" || s === ""))
        throw new ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings.");
    if (body.stream !== undefined && body.stream !== null && typeof body.stream !== "boolean")
        throw new ApiError(400, "'stream' must be a boolean.");
    const options = body.stream_options ?? {};
    if (typeof options !== "object" || Array.isArray(options)
        || (options.include_usage !== undefined && typeof options.include_usage !== "boolean"))
        throw new ApiError(400, "'stream_options' must be an object with a boolean include_usage.");
    return {
        messages,
        seed: integer("seed", Number.MIN_SAFE_INTEGER, null),
        temperature: number("temperature", 0, 2, 1),
        topP: number("top_p", 0, 1, 1),
        maxTokens: integer("max_completion_tokens", 1, integer("max_tokens", 1, DEFAULT_MAX_TOKENS)),
        presencePenalty: number("presence_penalty", -2, 2, 0),
        frequencyPenalty: number("frequency_penalty", -2, 2, 0),
        stop,
        stream: body.stream === true,
        includeUsage: body.stream === true && options.include_usage === true,
    };
}

/** The fixed template through which the model sees a conversation (it has no chat template). */
function promptText(messages) {
    return messages.map((m) => `${m.role}: ${m.content}\n`).join("") + "assistant:";
}

/** The length of the longest end of ``text`` that could begin a stop string: held back until
 * the next token shows whether it does. */
function stopPrefixLength(text, stops) {
    let longest = 0;
    for (const stop of stops)
        for (let n = Math.min(stop.length - 1, text.length); n > longest; n--)
            if (text.endsWith(stop.slice(0, n))) { longest = n; break; }
    return longest;
}

/** Generate a reply, calling ``onText`` with each new piece of text as its token arrives.
 * Returns what the usage and the final chunk report. ``isGone`` ends it early (client left). */
async function complete(request, onText, isGone) {
    await sequence.clearHistory();
    const prompt = model.tokenize(promptText(request.messages), false);
    if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null) prompt.unshift(model.tokens.bos);
    const room = context.contextSize - prompt.length - 1;
    if (room < 1) throw new ApiError(400, `The prompt is ${prompt.length} tokens, more than this model's context of ${context.contextSize}.`, "context_length_exceeded");
    const maxTokens = Math.min(request.maxTokens, room);
    // OpenAI's seed is a 64-bit integer, llama.cpp's a 32-bit one: take the low 32 bits (so 7
    // and 2**32 + 7 sample alike). llama.cpp reads 0xFFFFFFFF, that is -1, as "pick a random
    // seed", as llama-server does: a request with that seed does not reproduce.
    const seed = args["ignore-seed"] || request.seed === null
        ? randomInt(2 ** 32 - 1)
        : Number(BigInt.asUintN(32, BigInt(request.seed)));
    const generated = [];
    const penalize = request.presencePenalty !== 0 || request.frequencyPenalty !== 0;
    const evaluation = sequence.evaluate(prompt, {
        temperature: request.temperature,
        topK: 0, // OpenAI has no top-k: every token stays a candidate
        topP: request.topP,
        minP: 0,
        seed,
        repeatPenalty: penalize
            ? { punishTokens: () => generated.slice(-64), penalty: 1, presencePenalty: request.presencePenalty, frequencyPenalty: request.frequencyPenalty }
            : undefined,
    });
    // The prompt's last tokens tell the detokenizer that the reply continues text (keeps the
    // leading space of its first word).
    const before = prompt.slice(-4);
    let sent = "";
    let finishReason = "stop"; // the model's own end of generation, unless we stop it
    for await (const token of evaluation) {
        generated.push(token);
        let text = model.detokenize(generated, false, before);
        const stopAt = request.stop.map((s) => text.indexOf(s, Math.max(0, sent.length - s.length)))
            .filter((i) => i >= 0).reduce((a, b) => Math.min(a, b), Infinity);
        const last = stopAt !== Infinity || generated.length >= maxTokens || isGone();
        if (stopAt !== Infinity) text = text.slice(0, stopAt);
        else if (generated.length >= maxTokens) finishReason = "length";
        // A token may end inside a UTF-8 sequence (decoded as U+FFFD) or a stop string may be
        // starting: hold that back, unless nothing follows.
        let ready = text.length;
        if (!last) ready -= Math.max(/\uFFFD*$/.exec(text)[0].length, stopPrefixLength(text, request.stop));
        if (ready > sent.length) {
            onText(text.slice(sent.length, ready));
            sent = text.slice(0, ready);
        }
        if (last) break;
    }
    return { content: sent, finishReason, promptTokens: prompt.length, completionTokens: generated.length };
}

const tokenDelayMs = Number(args["token-delay-ms"]);

/** The moment a content chunk is written, for the benchmark (--chunk-times). */
function noteChunk(seed, n) {
    if (args["chunk-times"]) appendFileSync(args["chunk-times"], `${seed} ${n} ${(performance.timeOrigin + performance.now()).toFixed(3)}\n`);
}

// One request at a time on the one sequence: each waits for those before it.
let queue = Promise.resolve();
function serialized(job) {
    const run = queue.then(job);
    queue = run.catch(() => {});
    return run;
}

// ---- HTTP

function sendJson(response, status, body) {
    const bytes = Buffer.from(JSON.stringify(body));
    response.writeHead(status, { "Content-Type": "application/json", "Content-Length": bytes.length });
    response.end(bytes);
}

function sendError(response, status, message, code = null) {
    sendJson(response, status, { error: { message, type: "invalid_request_error", param: null, code } });
}

function authorized(request) {
    if (args["api-key"] === undefined) return true;
    const given = Buffer.from(request.headers.authorization ?? "");
    const expected = Buffer.from(`Bearer ${args["api-key"]}`);
    return given.length === expected.length && timingSafeEqual(given, expected);
}

async function readJson(request) {
    const parts = [];
    let size = 0;
    for await (const part of request) {
        size += part.length;
        if (size > MAX_BODY_BYTES) throw new ApiError(413, `The body is larger than ${MAX_BODY_BYTES} bytes.`);
        parts.push(part);
    }
    try {
        return JSON.parse(Buffer.concat(parts).toString("utf8"));
    } catch {
        throw new ApiError(400, "The body is not valid JSON.");
    }
}

async function chatCompletions(httpRequest, response) {
    const request = parseRequest(await readJson(httpRequest));
    const id = `chatcmpl-${randomBytes(12).toString("hex")}`;
    const created = Math.floor(Date.now() / 1000);
    const head = { id, object: "chat.completion.chunk", created, model: modelId, system_fingerprint: systemFingerprint };
    // The client left (its connection closed before we ended the reply): stop generating.
    let closed = false;
    response.on("close", () => { closed = true; });
    const gone = () => closed || response.destroyed;
    const usageOf = (result) => ({
        prompt_tokens: result.promptTokens,
        completion_tokens: result.completionTokens,
        total_tokens: result.promptTokens + result.completionTokens,
    });
    if (!request.stream) {
        const result = await serialized(() => complete(request, () => {}, gone));
        sendJson(response, 200, {
            ...head, object: "chat.completion",
            choices: [{ index: 0, message: { role: "assistant", content: result.content }, logprobs: null, finish_reason: result.finishReason }],
            usage: usageOf(result),
        });
        return;
    }
    await serialized(async () => {
        let started = false;
        const send = (fields) => {
            if (!started) {
                response.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache", Connection: "keep-alive" });
                started = true;
            }
            const usage = request.includeUsage && !("usage" in fields) ? { usage: null } : {};
            if (!gone()) response.write(`data: ${JSON.stringify({ ...head, ...fields, ...usage })}\n\n`);
        };
        const delta = (content) => ({ choices: [{ index: 0, delta: content, logprobs: null, finish_reason: null }] });
        let result;
        try {
            // Errors found before the first token (a prompt too long) are still plain HTTP errors.
            let first = true;
            let chunks = 0;
            const pieces = [];
            result = await complete(request, (text) => {
                if (tokenDelayMs > 0) {
                    pieces.push(text); // paced below, after generation: the model itself never waits
                    return;
                }
                if (first) send(delta({ role: "assistant", content: "" }));
                first = false;
                send(delta({ content: text }));
                noteChunk(request.seed, ++chunks);
            }, gone);
            for (const text of pieces) {
                await sleep(tokenDelayMs);
                if (first) send(delta({ role: "assistant", content: "" }));
                first = false;
                send(delta({ content: text }));
                noteChunk(request.seed, ++chunks);
            }
            if (first) send(delta({ role: "assistant", content: "" }));
        } catch (error) {
            if (!started) throw error;
            send({ error: { message: String(error.message), type: "server_error" } });
            response.end();
            return;
        }
        send({ choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: result.finishReason }] });
        if (request.includeUsage) send({ choices: [], usage: usageOf(result) });
        if (!gone()) response.end("data: [DONE]\n\n");
    });
}

const server = http.createServer(async (request, response) => {
    const started = performance.now();
    const url = new URL(request.url, "http://localhost");
    try {
        if (!authorized(request)) {
            sendError(response, 401, "Incorrect API key provided.", "invalid_api_key");
        } else if (url.pathname === "/v1/models" && request.method === "GET") {
            sendJson(response, 200, {
                object: "list",
                data: [{ id: modelId, object: "model", owned_by: "run-registry-tests", digest: modelDigest }],
            });
        } else if (url.pathname === "/v1/chat/completions" && request.method === "POST") {
            await chatCompletions(request, response);
        } else {
            sendError(response, 404, `Unknown request URL: ${request.method} ${url.pathname}.`, "unknown_url");
        }
    } catch (error) {
        if (!(error instanceof ApiError)) process.stderr.write(`error: ${error.stack}\n`);
        if (response.headersSent) response.destroy();
        else if (error instanceof ApiError) sendError(response, error.status, error.message, error.code);
        else sendJson(response, 500, { error: { message: "The server had an error.", type: "server_error", param: null, code: null } });
    }
    process.stderr.write(`${request.method} ${url.pathname} ${response.statusCode} ${(performance.now() - started).toFixed(1)}ms\n`);
});

server.listen(Number(args.port), args.host, () => {
    const { port } = server.address();
    const host = args.host.includes(":") ? `[${args.host}]` : args.host;
    process.stderr.write(`model ${modelId} ${modelDigest}, fingerprint ${systemFingerprint}, context ${context.contextSize}\n`);
    process.stdout.write(`listening on http://${host}:${port}\n`);
});
