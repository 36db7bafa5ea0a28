#!/usr/bin/env node
/*
 * Drive a jkg gateway with the real @jupyterlab/services client, from Node.
 *
 *   node services_client.mjs --base-url http://127.0.0.1:PORT/ [--token T]
 *   (or JKG_BASE_URL / JKG_TOKEN in the environment)
 *
 * Prints one JSON line per step on stdout: {"step": NAME, "ok": true, ...details}.
 * On the first failure it prints {"step": NAME, "ok": false, "error": ...} and
 * exits 1.  Every await is bounded (STEP_TIMEOUT_MS) and a watchdog ends the
 * process after OVERALL_TIMEOUT_MS, so it can never hang.  The library's own
 * console output goes to stderr, so stdout holds nothing but the results.
 */
import { createRequire } from 'node:module';
import { format } from 'node:util';

const require = createRequire(import.meta.url);
const WebSocket = require('ws');
const {
  ServerConnection,
  KernelManager,
  KernelAPI,
  KernelSpecAPI,
  KernelConnection
} = require('@jupyterlab/services');
const servicesVersion = require('@jupyterlab/services/package.json').version;
const wsVersion = require('ws/package.json').version;

const STEP_TIMEOUT_MS = Number(process.env.JKG_STEP_TIMEOUT_MS || 30000);
const OVERALL_TIMEOUT_MS = Number(process.env.JKG_OVERALL_TIMEOUT_MS || 110000);
const V1 = 'v1.kernel.websocket.jupyter.org';
const BUFFER = [0, 1, 2, 255];

// -- output ---------------------------------------------------------------------
const warnings = [];
for (const name of ['log', 'info', 'debug', 'warn', 'error']) {
  console[name] = (...args) => {
    const text = format(...args);
    if (name === 'warn' || name === 'error') warnings.push(text);
    process.stderr.write(`[${name}] ${text}\n`);
  };
}

let currentStep = 'startup';

function emit(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
}

function fail(error) {
  const message = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  emit({ step: currentStep, ok: false, error: message });
  if (error instanceof Error && error.stack) {
    process.stderr.write(`${error.stack}\n`);
  }
  process.exit(1);
}

process.on('uncaughtException', error => fail(error));
process.on('unhandledRejection', error => fail(error));
setTimeout(() => fail(new Error(`overall timeout of ${OVERALL_TIMEOUT_MS} ms exceeded`)), OVERALL_TIMEOUT_MS).unref();

function check(condition, message) {
  if (!condition) {
    throw new Error(`check failed: ${message}`);
  }
}

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
  let handle;
  const timeout = new Promise((_, reject) => {
    handle = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([Promise.resolve(promise), timeout]).finally(() => clearTimeout(handle));
}

async function step(name, body) {
  currentStep = name;
  const started = Date.now();
  const details = await withTimeout(body(), `step ${name}`);
  emit({ step: name, ok: true, ms: Date.now() - started, ...(details || {}) });
}

// -- arguments --------------------------------------------------------------------
function parseArgs(argv) {
  const args = { baseUrl: process.env.JKG_BASE_URL || '', token: process.env.JKG_TOKEN || '' };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--base-url') args.baseUrl = value();
    else if (flag === '--token') args.token = value();
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!args.baseUrl) {
    throw new Error('usage: services_client.mjs --base-url URL [--token T]');
  }
  if (!args.baseUrl.endsWith('/')) args.baseUrl += '/';
  return args;
}

// -- a ws WebSocket that records what happened on the wire -------------------------------
const sockets = [];

function trackingWebSocket(label, forceLegacy) {
  return class TrackedWebSocket extends WebSocket {
    constructor(url, protocols, options) {
      // Forcing the legacy protocol: offer no subprotocol, exactly as a client
      // (or a proxy) that knows nothing of v1 would.  The library copes with a
      // server that selects none and then uses its default (legacy) serializer.
      const offered = forceLegacy ? [] : protocols;
      super(url, offered, options);
      const record = {
        label,
        url: String(url),
        offered: [...(offered || [])],
        protocol: null,
        frames: { text: 0, binary: 0 },
        closed: null
      };
      sockets.push(record);
      this.on('open', () => {
        record.protocol = this.protocol;
      });
      this.on('message', (_data, isBinary) => {
        record.frames[isBinary ? 'binary' : 'text'] += 1;
      });
      this.on('close', code => {
        record.closed = code;
      });
    }
  };
}

function redact(url, token) {
  return token ? url.split(encodeURIComponent(token)).join('<token>') : url;
}

function socketsOf(label, token) {
  return sockets
    .filter(s => s.label === label)
    .map(s => ({ ...s, url: redact(s.url, token) }));
}

// -- helpers over the library -------------------------------------------------------
function makeSettings(args, label, forceLegacy = false) {
  return ServerConnection.makeSettings({
    baseUrl: args.baseUrl,
    wsUrl: 'ws' + args.baseUrl.slice(4),
    token: args.token,
    appendToken: true,
    WebSocket: trackingWebSocket(label, forceLegacy)
  });
}

function waitForConnected(kernel) {
  if (kernel.connectionStatus === 'connected') return Promise.resolve();
  return new Promise(resolve => {
    const on = (_, status) => {
      if (status === 'connected') {
        kernel.connectionStatusChanged.disconnect(on);
        resolve();
      }
    };
    kernel.connectionStatusChanged.connect(on);
  });
}

/** Execute code; return {reply, stdout, results, inputRequests, errors}. */
async function execute(kernel, code, { stdin } = {}) {
  const future = kernel.requestExecute({ code, allow_stdin: Boolean(stdin), stop_on_error: true });
  const out = { stdout: '', stderr: '', results: [], errors: [], inputRequests: [] };
  future.onIOPub = msg => {
    const type = msg.header.msg_type;
    if (type === 'stream') out[msg.content.name] += msg.content.text;
    else if (type === 'execute_result') out.results.push(msg.content);
    else if (type === 'error') out.errors.push(msg.content);
  };
  if (stdin) {
    future.onStdin = msg => {
      out.inputRequests.push(msg.content);
      kernel.sendInputReply({ status: 'ok', value: stdin(msg) }, msg.header);
    };
  }
  out.reply = (await withTimeout(future.done, `execute_reply to ${JSON.stringify(code.slice(0, 40))}`)).content;
  return out;
}

async function executeOk(kernel, code, options) {
  const out = await execute(kernel, code, options);
  check(out.reply.status === 'ok',
    `execution of ${JSON.stringify(code.slice(0, 60))} failed: ${JSON.stringify(out.reply)} ${JSON.stringify(out.errors)}`);
  return out;
}

// Kernel-side comm target: acknowledges the open, then echoes every comm_msg
// back with its data, metadata and binary buffers unchanged.
const REGISTER_TARGETS = `
def _jkg_echo_target(comm, open_msg):
    @comm.on_msg
    def _echo(msg):
        comm.send(data={"echo": msg["content"]["data"]}, metadata={"echoed": True},
                  buffers=[bytes(b) for b in msg.get("buffers") or []])
    comm.send(data={"opened": open_msg["content"]["data"]})

for _name in ("jkg_echo", "jkg_echo_legacy"):
    get_ipython().kernel.comm_manager.register_target(_name, _jkg_echo_target)
print("registered")
`;

function bytesOf(view) {
  if (view instanceof ArrayBuffer) return [...new Uint8Array(view)];
  return [...new Uint8Array(view.buffer, view.byteOffset, view.byteLength)];
}

/** Open a comm on `target`, send one message with a binary buffer, return what came back. */
async function commRoundTrip(kernel, target) {
  const comm = kernel.createComm(target);
  const received = [];
  let wake = () => {};
  comm.onMsg = msg => {
    received.push(msg);
    wake();
  };
  const next = async what => {
    while (received.length === 0) {
      await withTimeout(new Promise(resolve => { wake = resolve; }), what);
    }
    return received.shift();
  };
  // With a kernel that supports subshells (ipykernel 7 does), comms go over
  // a per-target subshell created with create_subshell_request on control.
  if (kernel.supportsSubshells) {
    await withTimeout(comm.subshellStarted, 'the comm subshell');
  }
  await withTimeout(comm.open({ hello: target }).done, 'comm_open reply');
  const opened = await next('the comm open acknowledgement');
  check(opened.content.data?.opened?.hello === target, `open ack ${JSON.stringify(opened.content.data)}`);

  const sent = new Uint8Array(BUFFER);
  await withTimeout(comm.send({ n: 42, text: 'ünïcode' }, { meta: 'x' }, [sent]).done, 'comm_msg reply');
  const echoed = await next('the echoed comm_msg');
  check(echoed.header.msg_type === 'comm_msg', `echo type ${echoed.header.msg_type}`);
  check(echoed.content.comm_id === comm.commId, 'echo has our comm_id');
  check(echoed.content.data?.echo?.n === 42 && echoed.content.data.echo.text === 'ünïcode',
    `echoed data ${JSON.stringify(echoed.content.data)}`);
  check(echoed.metadata?.echoed === true, `echoed metadata ${JSON.stringify(echoed.metadata)}`);
  const buffers = (echoed.buffers || []).map(bytesOf);
  check(buffers.length === 1, `expected 1 echoed buffer, got ${buffers.length}`);
  check(JSON.stringify(buffers[0]) === JSON.stringify(BUFFER),
    `echoed buffer ${JSON.stringify(buffers[0])} != ${JSON.stringify(BUFFER)}`);
  const subshellId = comm.subshellId;
  comm.close();
  return { buffer: buffers[0], subshell_id: subshellId, comm_id: comm.commId };
}

// -- the run ----------------------------------------------------------------------------
async function main() {
  currentStep = 'arguments';
  const args = parseArgs(process.argv.slice(2));
  const settings = makeSettings(args, 'main');
  emit({
    step: 'versions', ok: true, node: process.version, services: servicesVersion, ws: wsVersion,
    token: Boolean(args.token)
  });

  if (args.token) {
    await step('auth_rejected', async () => {
      const bad = ServerConnection.makeSettings({ ...settings, token: args.token + 'x' });
      let status = null;
      try {
        await KernelSpecAPI.getSpecs(bad);
      } catch (error) {
        status = error.response?.status ?? String(error);
      }
      check(status === 401 || status === 403, `a wrong token must be refused, got ${status}`);
      return { status };
    });
  }

  let defaultSpec;
  await step('kernelspecs', async () => {
    const specs = await KernelSpecAPI.getSpecs(settings);
    check(specs && typeof specs.kernelspecs === 'object', 'a kernelspecs model');
    check('python3' in specs.kernelspecs, `python3 among ${Object.keys(specs.kernelspecs)}`);
    check(specs.default in specs.kernelspecs, `default ${specs.default} is listed`);
    // The library drops specs it cannot validate and replaces an unknown
    // default, warning on the console: either would be a gateway bug.
    const complaints = warnings.filter(w => /kernel ?spec|Default kernel/i.test(w));
    check(complaints.length === 0, `the library rejected part of the model: ${complaints}`);
    const python = specs.kernelspecs.python3;
    check(python.language === 'python', `python3 language ${python.language}`);
    check(python.display_name && python.argv.length > 0, 'display_name and argv');
    defaultSpec = specs.default;
    return { default: specs.default, names: Object.keys(specs.kernelspecs), resources: Object.keys(python.resources) };
  });

  const manager = new KernelManager({ serverSettings: settings });
  let kernel;
  let kernelId;
  await step('start', async () => {
    await withTimeout(manager.ready, 'the kernel manager');
    kernel = await withTimeout(manager.startNew({ name: 'python3' }), 'POST /api/kernels');
    kernelId = kernel.id;
    await withTimeout(waitForConnected(kernel), 'the channels WebSocket');
    const info = (await withTimeout(kernel.info, 'kernel_info_reply'));
    check(info.language_info?.name === 'python', `language ${info.language_info?.name}`);
    const running = await KernelAPI.listRunning(settings);
    check(running.some(k => k.id === kernelId), 'the new kernel is listed');
    const model = await KernelAPI.getKernelModel(kernelId, settings);
    check(model?.id === kernelId && model.name === 'python3', `model ${JSON.stringify(model)}`);
    const ws = socketsOf('main', args.token);
    check(ws.length === 1, `one socket, got ${ws.length}`);
    check(ws[0].protocol === V1, `v1 selected, got ${JSON.stringify(ws[0].protocol)}`);
    if (args.token) {
      check(ws[0].url.includes('&token=<token>'), `token in the WebSocket query: ${ws[0].url}`);
    }
    return {
      kernel_id: kernelId, default_spec: defaultSpec, protocol_version: info.protocol_version,
      implementation: info.implementation, supports_subshells: kernel.supportsSubshells,
      ws_protocol: ws[0].protocol, ws_url: ws[0].url
    };
  });

  await step('execute_stream', async () => {
    const out = await executeOk(kernel, 'jkg_marker = "before restart"\nprint("hello from", "jkg")');
    check(out.stdout === 'hello from jkg\n', `stdout ${JSON.stringify(out.stdout)}`);
    return { stdout: out.stdout, execution_count: out.reply.execution_count };
  });

  await step('execute_result', async () => {
    const out = await executeOk(kernel, '6 * 7');
    check(out.results.length === 1, `one execute_result, got ${out.results.length}`);
    check(out.results[0].data['text/plain'] === '42', `result ${JSON.stringify(out.results[0].data)}`);
    check(out.results[0].execution_count === out.reply.execution_count, 'execution counts agree');
    const error = await execute(kernel, '1 / 0');
    check(error.reply.status === 'error' && error.reply.ename === 'ZeroDivisionError',
      `an error reply, got ${JSON.stringify(error.reply)}`);
    check(error.errors.length === 1, 'an error message on iopub');
    return { result: out.results[0].data['text/plain'], error: error.reply.ename };
  });

  await step('stdin', async () => {
    const out = await executeOk(kernel, 'name = input("name? ")\nprint("hello", name)', { stdin: () => 'jkg-user' });
    check(out.inputRequests.length === 1, `one input_request, got ${out.inputRequests.length}`);
    check(out.inputRequests[0].prompt === 'name? ', `prompt ${JSON.stringify(out.inputRequests[0].prompt)}`);
    check(out.inputRequests[0].password === false, 'not a password prompt');
    check(out.stdout === 'hello jkg-user\n', `stdout ${JSON.stringify(out.stdout)}`);
    return { prompt: out.inputRequests[0].prompt, stdout: out.stdout };
  });

  await step('comm_v1', async () => {
    await executeOk(kernel, REGISTER_TARGETS);
    const before = socketsOf('main', args.token)[0].frames.binary;
    const result = await commRoundTrip(kernel, 'jkg_echo');
    const ws = socketsOf('main', args.token)[0];
    check(ws.protocol === V1, 'still on v1');
    check(ws.frames.text === 0, `v1 carries binary frames only, got ${ws.frames.text} text frames`);
    check(ws.frames.binary > before, 'binary frames arrived');
    return { ...result, ws_protocol: ws.protocol, frames: ws.frames };
  });

  await step('comm_legacy', async () => {
    // A second connection to the same kernel that offers no subprotocol, so
    // the gateway must answer with the legacy JSON / binary framing.
    const legacySettings = makeSettings(args, 'legacy', true);
    const legacy = new KernelConnection({ model: kernel.model, serverSettings: legacySettings });
    try {
      await withTimeout(waitForConnected(legacy), 'the legacy WebSocket');
      await withTimeout(legacy.info, 'kernel_info_reply over legacy');
      const ws = socketsOf('legacy', args.token)[0];
      check(ws.offered.length === 0, 'no subprotocol offered');
      check(ws.protocol === '', `no subprotocol selected, got ${JSON.stringify(ws.protocol)}`);
      const out = await executeOk(legacy, 'print("legacy", 1 + 1)');
      check(out.stdout === 'legacy 2\n', `stdout ${JSON.stringify(out.stdout)}`);
      const result = await commRoundTrip(legacy, 'jkg_echo_legacy');
      check(ws.frames.text > 0, 'legacy JSON text frames arrived');
      check(ws.frames.binary > 0, 'the buffer-carrying comm_msg came as a legacy binary frame');
      return { ...result, ws_protocol: ws.protocol, frames: ws.frames };
    } finally {
      legacy.dispose();
    }
  });

  await step('interrupt', async () => {
    // Interrupt only once the cell is certainly running: it prints first.
    const future = kernel.requestExecute({
      code: 'import time\nprint("sleeping", flush=True)\nfor _ in range(300):\n    time.sleep(0.1)'
    });
    await withTimeout(new Promise(resolve => {
      future.onIOPub = msg => {
        if (msg.header.msg_type === 'stream' && msg.content.text.includes('sleeping')) resolve();
      };
    }), 'the cell to start running');
    const started = Date.now();
    await kernel.interrupt();
    const reply = (await withTimeout(future.done, 'the interrupted execute_reply', 15000)).content;
    check(reply.status === 'error' && reply.ename === 'KeyboardInterrupt', `reply ${JSON.stringify(reply)}`);
    return { ename: reply.ename, interrupt_ms: Date.now() - started };
  });

  await step('restart', async () => {
    const socketsBefore = socketsOf('main', args.token).length;
    const statuses = [];
    const connections = [];
    const onStatus = (_, status) => statuses.push(status);
    const onConnection = (_, status) => connections.push(status);
    kernel.statusChanged.connect(onStatus);
    kernel.connectionStatusChanged.connect(onConnection);
    try {
      await withTimeout(kernel.restart(), 'the restart and reconnect');
      await withTimeout(kernel.info, 'kernel_info_reply after restart');
      const model = await KernelAPI.getKernelModel(kernelId, settings);
      check(kernel.id === kernelId && model?.id === kernelId, `same kernel id after restart (${model?.id})`);
      const out = await executeOk(kernel, 'print("jkg_marker" in globals(), 2 + 3)');
      check(out.stdout === 'False 5\n', `old variables must be gone, got ${JSON.stringify(out.stdout)}`);
      check(out.reply.execution_count === 1, `execution count restarted, got ${out.reply.execution_count}`);
      const ws = socketsOf('main', args.token);
      // jupyter_server sends no "restarting" status for a REST restart, so the
      // library reconnects exactly once; more sockets (and an "autorestarting"
      // status) mean the gateway made the client think the kernel had died.
      // Reported here, asserted by the pytest module.
      check(ws.length > socketsBefore, `the client reopened its WebSocket (${ws.length} sockets)`);
      const [first, last] = [ws[0], ws[ws.length - 1]];
      const sessionOf = url => new URL(url.replace('<token>', 'x')).searchParams.get('session_id');
      check(sessionOf(first.url) === sessionOf(last.url), 'the same session_id on reconnect');
      check(last.protocol === V1, `v1 again after reconnect, got ${JSON.stringify(last.protocol)}`);
      check(connections.includes('connecting') && connections.at(-1) === 'connected',
        `connection statuses ${connections}`);
      check(statuses.includes('restarting'), `statuses ${statuses}`);
      return {
        kernel_id: model.id, statuses, connections, new_sockets: ws.length - socketsBefore,
        stdout: out.stdout, execution_count: out.reply.execution_count, session_id_kept: true
      };
    } finally {
      kernel.statusChanged.disconnect(onStatus);
      kernel.connectionStatusChanged.disconnect(onConnection);
    }
  });

  await step('shutdown', async () => {
    // A second client of the same kernel (another tab, say) watches the
    // shutdown: how the gateway closes its socket decides whether the library
    // gives up quietly (1000/1001) or keeps reconnecting (any other code).
    const observer = new KernelConnection({ model: kernel.model, serverSettings: makeSettings(args, 'observer') });
    try {
      await withTimeout(waitForConnected(observer), 'the observer WebSocket');
      await withTimeout(observer.info, 'kernel_info_reply on the observer');
      await withTimeout(manager.shutdown(kernelId), 'DELETE /api/kernels/{id}');
      check(kernel.isDisposed || kernel.status === 'dead', `connection disposed (status ${kernel.status})`);
      const running = await KernelAPI.listRunning(settings);
      check(!running.some(k => k.id === kernelId), 'the kernel is gone from the listing');
      // 7.x returns undefined for a 404 and throws for any other error status.
      const model = await KernelAPI.getKernelModel(kernelId, settings);
      check(model === undefined, `GET /api/kernels/{id} after shutdown: ${JSON.stringify(model)}`);
      const deadline = Date.now() + 2000;
      while (observer.connectionStatus !== 'disconnected' && Date.now() < deadline) {
        await new Promise(resolve => setTimeout(resolve, 50));
      }
      const observed = socketsOf('observer', args.token);
      return {
        listed: running.map(k => k.id), model_after: 'not found',
        main_close_code: socketsOf('main', args.token).filter(ws => ws.protocol !== null).at(-1).closed,
        observer_close_code: observed[0].closed,
        observer_connection_status: observer.connectionStatus,
        observer_reconnect_sockets: observed.length - 1
      };
    } finally {
      observer.dispose();
    }
  });

  manager.dispose();
  currentStep = 'done';
  emit({ step: 'done', ok: true, sockets: sockets.map(s => ({ ...s, url: redact(s.url, args.token) })) });
  process.exit(0);
}

main().catch(fail);
