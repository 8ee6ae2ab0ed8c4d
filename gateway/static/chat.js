/* chat.js - shared browser client for the chat gateway (wire protocol v1).
 *
 * Plain JavaScript, no build step, no dependencies. Exposes `window.ChatGW`:
 *
 *   ChatGW.bootstrap({role, sub, tenant, token, group})
 *       -> Promise<{config, token, sub, tenant, role}>   (reads /api/config,
 *          mints a development token unless one is given)
 *   new ChatGW.Client({...bootstrap result, storageKey, log})
 *       .on(kind, fn) / .start() / .sendMessage(conv, text) / .open(group) ...
 *
 * Guarantees the client adds on top of the server's:
 *   - reconnects with exponential backoff (with jitter) and, after every
 *     `welcome`, sends `resume {conv, after: lastSeq}` for each known
 *     conversation;
 *   - every outgoing `msg` carries a client id (crypto.randomUUID() where
 *     available) and stays in an outbox (persisted in localStorage when a
 *     storageKey is given) until its `ack` arrives; after a reconnect the
 *     outbox is resent with the same ids, so the server's dedup makes delivery
 *     exactly-once;
 *   - server frames may be a single envelope or an array (batch);
 *   - `msg` / `event` entries with seq <= the last seq seen for their
 *     conversation are dropped (belt and braces: the server already promises
 *     at-most-once, in order);
 *   - typing notifications are throttled; read markers only move forward.
 *
 * Bots (docs/protocol.md): `bot_chunk` frames are emitted as 'bot_chunk'
 * (pieces of a streaming answer, keyed by `reply_to`); `ChatGW.BotStreams`
 * renders them as a growing bubble that the final `msg` replaces.
 */
(function (global) {
  'use strict';

  var PROTOCOL_VERSION = 1;

  // ---------------------------------------------------------------- helpers

  function uuid() {
    var c = global.crypto;
    if (c && typeof c.randomUUID === 'function') {
      try { return c.randomUUID(); } catch (e) { /* insecure context */ }
    }
    var bytes = new Array(16);
    if (c && typeof c.getRandomValues === 'function') {
      var buf = new Uint8Array(16);
      c.getRandomValues(buf);
      for (var i = 0; i < 16; i++) bytes[i] = buf[i];
    } else {
      for (var j = 0; j < 16; j++) bytes[j] = Math.floor(Math.random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10
    var hex = bytes.map(function (b) { return (b + 0x100).toString(16).slice(1); }).join('');
    return hex.slice(0, 8) + '-' + hex.slice(8, 12) + '-' + hex.slice(12, 16) + '-' +
      hex.slice(16, 20) + '-' + hex.slice(20);
  }

  function param(name, fallback) {
    try {
      var v = new URLSearchParams(global.location.search).get(name);
      return v === null || v === '' ? fallback : v;
    } catch (e) {
      return fallback;
    }
  }

  function storageGet(key) {
    try { return global.localStorage.getItem(key); } catch (e) { return null; }
  }

  function storageSet(key, value) {
    try {
      if (value === null || value === undefined) global.localStorage.removeItem(key);
      else global.localStorage.setItem(key, value);
    } catch (e) { /* private mode, quota: keep going in memory */ }
  }

  function fetchJSON(url) {
    return fetch(url, { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
      if (!r.ok) {
        return r.text().then(function (body) {
          var err = new Error('HTTP ' + r.status + ' for ' + url + (body ? ': ' + body.slice(0, 200) : ''));
          err.status = r.status;
          throw err;
        });
      }
      return r.json();
    });
  }

  function defaultWsUrl() {
    var l = global.location;
    return (l.protocol === 'https:' ? 'wss://' : 'ws://') + l.host + '/ws';
  }

  function mintToken(role, sub, tenant, extra) {
    var q = new URLSearchParams({ role: role, sub: sub, tenant: tenant || '' });
    if (extra) {
      Object.keys(extra).forEach(function (k) {
        if (extra[k] !== undefined && extra[k] !== null && extra[k] !== '') q.set(k, extra[k]);
      });
    }
    return fetchJSON('/api/dev/token?' + q.toString());
  }

  /* Reads /api/config and gets a token: `opts.token` (or ?token=) wins,
   * otherwise a development token is minted for (role, sub, tenant). */
  function bootstrap(opts) {
    opts = opts || {};
    return fetchJSON('/api/config').catch(function (e) {
      // A page opened without the HTTP side (or an older node): fall back to
      // the same host and keep going if a token was given.
      if (!opts.token) throw e;
      return { ws_url: defaultWsUrl(), version: PROTOCOL_VERSION, tenant: opts.tenant || '', dev_tokens: false };
    }).then(function (config) {
      var tenant = opts.tenant || config.tenant || '';
      var wsUrl = config.ws_url || defaultWsUrl();
      if (/^\//.test(wsUrl)) { // relative path: same host as the page
        wsUrl = defaultWsUrl().replace(/\/ws$/, '') + wsUrl;
      }
      var result = { config: config, wsUrl: wsUrl, tenant: tenant, role: opts.role, sub: opts.sub, token: opts.token || null };
      if (result.token) return result;
      if (config.dev_tokens === false) {
        throw new Error('This node does not mint development tokens; open the page with ?token=<JWT>.');
      }
      result.mint = function () {
        return mintToken(opts.role, opts.sub, tenant, opts.tokenExtra).then(function (t) {
          result.token = t.token;
          if (t.sub) result.sub = t.sub;
          if (t.tenant) result.tenant = t.tenant;
          return t.token;
        });
      };
      return result.mint().then(function () { return result; });
    });
  }

  // ---------------------------------------------------------------- client

  function Client(opts) {
    this.opts = opts || {};
    this.wsUrl = this.opts.wsUrl;
    this.token = this.opts.token;
    this.mint = this.opts.mint || null;        // () => Promise<token>, dev tokens only
    this.role = this.opts.role;
    this.sub = this.opts.sub;
    this.tenant = this.opts.tenant;
    this.storageKey = this.opts.storageKey || null;
    this.logFn = this.opts.log || null;

    this.backoffBase = this.opts.backoffBase || 500;     // ms
    this.backoffMax = this.opts.backoffMax || 15000;     // ms
    this.typingEvery = this.opts.typingEvery || 3000;    // ms between typing:on
    this.typingIdle = this.opts.typingIdle || 4000;      // ms before typing:off

    this.handlers = {};
    this.ws = null;
    this.state = 'idle';          // idle | connecting | open | ready | waiting | stopped
    this.attempt = 0;             // reconnect attempts since the last welcome
    this.failedBeforeWelcome = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.refreshTimer = null;     // presents a fresh token before welcome.exp (docs/protocol.md, Tokens)
    this.lastRx = 0;
    this.hb = 30;
    this.welcome = null;

    this.convs = new Map();       // conv id -> latest conv info
    this.lastSeq = new Map();     // conv id -> last msg/event seq handled
    this.readSent = new Map();    // conv id -> last read marker sent
    this.typingState = new Map(); // conv id -> {on, sentAt, timer}
    this.resuming = new Map();    // conv id -> entries held until `resumed`
    this.outbox = new Map();      // client msg id -> msg envelope (insertion ordered)
    this.pending = new Map();     // rid -> {resolve, reject, env, retry, timer}
    this.queued = [];             // requests made before `welcome`
    this.ridCounter = 0;

    this._loadOutbox();
  }

  Client.prototype.on = function (kind, fn) {
    (this.handlers[kind] = this.handlers[kind] || []).push(fn);
    return this;
  };

  Client.prototype.emit = function (kind, payload) {
    var list = this.handlers[kind];
    if (list) {
      for (var i = 0; i < list.length; i++) {
        try { list[i](payload, this); } catch (e) { this.log('handler for ' + kind + ' failed: ' + (e && e.stack || e)); }
      }
    }
    var all = this.handlers['*'];
    if (all) {
      for (var j = 0; j < all.length; j++) {
        try { all[j](kind, payload, this); } catch (e2) { /* ignore */ }
      }
    }
  };

  Client.prototype.log = function (text) {
    if (this.logFn) this.logFn(text);
    else if (global.console) global.console.debug('[chatgw]', text);
  };

  Client.prototype._setState = function (state, info) {
    this.state = state;
    this.emit('state', { state: state, info: info || null, attempt: this.attempt });
  };

  // ------------------------------------------------------------ connection

  Client.prototype.start = function () {
    var self = this;
    if (this.state !== 'idle' && this.state !== 'stopped') return;
    this.state = 'idle';
    // Re-emit persisted unsent messages so the page can show them as pending.
    this.outbox.forEach(function (env) { self.emit('pending', env); });
    if (global.addEventListener) {
      global.addEventListener('online', function () {
        if (self.state === 'waiting') self._connectNow();
      });
    }
    this._connect();
  };

  Client.prototype.stop = function () {
    this._setState('stopped');
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    this._stopHeartbeat();
    if (this.ws) {
      var ws = this.ws;
      this.ws = null;
      this._detach(ws);
      try { ws.close(1000, 'bye'); } catch (e) { /* ignore */ }
    }
  };

  Client.prototype._connectNow = function () {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this._connect();
  };

  Client.prototype._connect = function () {
    var self = this;
    if (this.state === 'stopped') return;
    var url = this.wsUrl + (this.wsUrl.indexOf('?') >= 0 ? '&' : '?') +
      'v=' + PROTOCOL_VERSION + '&token=' + encodeURIComponent(this.token || '');
    this._setState('connecting');
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.log('cannot open WebSocket: ' + e);
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.gotWelcome = false;
    ws.onopen = function () {
      if (self.ws !== ws) return;
      self.lastRx = Date.now();
      self._setState('open');
    };
    ws.onmessage = function (ev) {
      if (self.ws !== ws) return;
      self.lastRx = Date.now();
      self._onFrame(ev.data);
    };
    ws.onerror = function () { /* onclose follows and carries the details */ };
    ws.onclose = function (ev) {
      if (self.ws !== ws) return;
      self._onClose(ev.code, ev.reason);
    };
  };

  Client.prototype._detach = function (ws) {
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
  };

  Client.prototype._onClose = function (code, reason) {
    var hadWelcome = this.gotWelcome;
    this.ws = null;
    this.gotWelcome = false;
    this._stopHeartbeat();
    // Entries held for a resume are dropped: lastSeq did not move, so the
    // next resume asks for them again.
    this.resuming.forEach(function (hold) { clearTimeout(hold.timer); });
    this.resuming.clear();
    this._failPending('disconnected');
    this.typingState.forEach(function (t) { clearTimeout(t.timer); t.on = false; });
    this.log('socket closed: ' + code + (reason ? ' ' + reason : ''));
    this.emit('disconnected', { code: code, reason: reason });
    if (this.state === 'stopped') return;
    if (!hadWelcome) this.failedBeforeWelcome++;
    this._scheduleReconnect();
  };

  Client.prototype._scheduleReconnect = function () {
    var self = this;
    if (this.state === 'stopped') return;
    var exp = Math.min(this.backoffMax, this.backoffBase * Math.pow(2, this.attempt));
    var delay = Math.round(exp / 2 + Math.random() * exp / 2); // "equal jitter"
    if (this.retryAfterMs) { delay = Math.max(delay, this.retryAfterMs); this.retryAfterMs = 0; }
    this.attempt++;
    this._setState('waiting', { delay: delay });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(function () {
      self.reconnectTimer = null;
      // Two refusals in a row before any welcome: the token may have expired
      // (the upgrade is answered 401, which the browser can't show us).
      if (self.mint && self.failedBeforeWelcome >= 2) {
        self.mint().then(function (t) {
          self.token = t;
          self.failedBeforeWelcome = 0;
          self._connect();
        }, function (e) {
          self.log('token refresh failed: ' + e.message);
          self._scheduleReconnect();
        });
      } else {
        self._connect();
      }
    }, delay);
  };

  /* Forces a reconnect now (used by the heartbeat and by the demo pages). */
  Client.prototype.reconnect = function () {
    if (this.ws) {
      var ws = this.ws;
      this._detach(ws);
      try { ws.close(4000, 'client reconnect'); } catch (e) { /* ignore */ }
      this._onClose(4000, 'client reconnect');
    } else if (this.state === 'waiting') {
      this._connectNow();
    }
  };

  Client.prototype._startHeartbeat = function () {
    var self = this;
    this._stopHeartbeat();
    var hbMs = Math.max(1, Number(this.hb) || 30) * 1000;
    this.heartbeatTimer = setInterval(function () {
      var idle = Date.now() - self.lastRx;
      if (idle > hbMs * 2.5) {
        self.log('no traffic for ' + idle + ' ms: reconnecting');
        self.reconnect();
      } else if (idle > hbMs) {
        self._send({ t: 'ping', rid: self._rid('ping') });
      }
    }, Math.max(500, hbMs / 2));
  };

  /* Before the token expires (a minute before `exp`, or a quarter of its remaining life
   * before it for short tokens), mint a fresh one and present it on the open connection. */
  Client.prototype._scheduleRefresh = function (exp) {
    var self = this;
    clearTimeout(this.refreshTimer);
    if (!this.mint || !exp) return;
    var left = exp * 1000 - Date.now();
    var delay = Math.max(1000, left - Math.min(60000, left / 4));
    this.refreshTimer = setTimeout(function () {
      self.mint().then(function (t) {
        return self.request({ t: 'refresh', token: t }).then(function (r) {
          self.token = t;  // the next reconnect uses it too
          self.log('token refreshed until ' + new Date(r.exp * 1000).toISOString());
          self.emit('refreshed', r);
          self._scheduleRefresh(r.exp);
        });
      }).catch(function (e) {
        self.log('token refresh failed: ' + e.message);
        self._scheduleRefresh(Date.now() / 1000 + 5);
      });
    }, delay);
  };

  Client.prototype._stopHeartbeat = function () {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  };

  Client.prototype._send = function (env) {
    var ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(env));
      this.emit('sent', env);
      return true;
    } catch (e) {
      this.log('send failed: ' + e);
      return false;
    }
  };

  Client.prototype._rid = function (prefix) {
    this.ridCounter++;
    return (prefix || 'r') + '-' + this.ridCounter.toString(36) + '-' + Math.random().toString(36).slice(2, 6);
  };

  /* Sends a request and resolves with the reply carrying its rid (rejects on
   * `error`). Requests made while disconnected wait for the next welcome;
   * with `retry`, a request in flight when the socket drops is sent again. */
  Client.prototype.request = function (env, options) {
    var self = this;
    options = options || {};
    env.rid = env.rid || this._rid(env.t);
    return new Promise(function (resolve, reject) {
      var entry = { resolve: resolve, reject: reject, env: env, retry: !!options.retry, match: options.match || null };
      entry.timer = setTimeout(function () {
        if (self.pending.get(env.rid) === entry) {
          self.pending.delete(env.rid);
          reject(new Error(env.t + ' timed out'));
        }
        var i = self.queued.indexOf(entry);
        if (i >= 0) { self.queued.splice(i, 1); reject(new Error(env.t + ' timed out')); }
      }, options.timeout || 20000);
      if (self.state === 'ready' && self._send(env)) {
        self.pending.set(env.rid, entry);
      } else {
        self.queued.push(entry);
      }
    });
  };

  Client.prototype._failPending = function (why) {
    var keep = [];
    this.pending.forEach(function (entry) {
      if (entry.retry) keep.push(entry);
      else { clearTimeout(entry.timer); entry.reject(new Error(entry.env.t + ': ' + why)); }
    });
    this.pending.clear();
    this.queued = keep.concat(this.queued);
  };

  Client.prototype._settle = function (rid, err, value) {
    if (!rid) return false;
    var entry = this.pending.get(rid);
    if (!entry) return false;
    this.pending.delete(rid);
    clearTimeout(entry.timer);
    if (err) entry.reject(err); else entry.resolve(value);
    return true;
  };

  // ---------------------------------------------------------------- frames

  Client.prototype._onFrame = function (data) {
    if (typeof data !== 'string') {
      this.log('ignoring a binary frame (this client speaks JSON)');
      return;
    }
    var parsed;
    try { parsed = JSON.parse(data); } catch (e) {
      this.log('undecodable frame: ' + data.slice(0, 200));
      return;
    }
    var list = Array.isArray(parsed) ? parsed : [parsed];
    for (var i = 0; i < list.length; i++) {
      var env = list[i];
      if (env && typeof env === 'object' && !Array.isArray(env)) this._handle(env);
    }
  };

  Client.prototype._noteConv = function (info) {
    if (!info || !info.conv) return null;
    var prev = this.convs.get(info.conv) || {};
    var merged = Object.assign({}, prev, info);
    delete merged.t;
    delete merged.rid;
    this.convs.set(info.conv, merged);
    return merged;
  };

  /* A log entry (msg or event): drop if already seen, else update and emit. */
  Client.prototype._entry = function (env, source) {
    var conv = env.conv;
    var seq = env.seq;
    if (conv && typeof seq === 'number') {
      var last = this.lastSeq.get(conv) || 0;
      if (seq <= last) {
        this.emit('dropped', env);
        return false;
      }
      this.lastSeq.set(conv, seq);
    }
    var kind = env.t || (env.ev ? 'event' : 'msg');
    if (kind === 'msg') {
      if (env.id && this.outbox.has(env.id) && env.from === this.sub) {
        this.outbox.delete(env.id); // our own message is in the log: the ack was lost
        this._saveOutbox();
      }
    } else if (kind === 'event') {
      this._applyEvent(env);
    }
    var out = Object.assign({}, env, { t: kind, source: source || 'live' });
    this.emit(kind, out);
    return true;
  };

  Client.prototype._applyEvent = function (env) {
    var info = this.convs.get(env.conv) || { conv: env.conv };
    switch (env.ev) {
      case 'bot': info.state = 'bot'; break;
      case 'handoff': info.state = 'queued'; break;
      case 'queued': info.state = 'queued'; break;
      case 'requeued': info.state = 'queued'; info.agent = null; break;
      case 'assigned': info.state = 'assigned'; if (env.agent) info.agent = env.agent; break;
      case 'transferred': if (env.agent) info.agent = env.agent; if (env.group) info.group = env.group; break;
      case 'closed': info.state = 'closed'; break;
    }
    if (typeof env.seq === 'number') info.seq = Math.max(info.seq || 0, env.seq);
    this.convs.set(env.conv, info);
  };

  Client.prototype._entries = function (conv, entries, source) {
    if (!Array.isArray(entries)) return;
    var sorted = entries.slice().sort(function (a, b) { return (a.seq || 0) - (b.seq || 0); });
    for (var i = 0; i < sorted.length; i++) {
      var e = Object.assign({ conv: conv }, sorted[i]);
      this._incoming(e, source);
    }
  };

  /* Requests whose reply carries no rid (close, transfer) settle on a matching frame. */
  Client.prototype._matchPending = function (env) {
    var self = this;
    var hits = [];
    this.pending.forEach(function (entry, rid) {
      if (entry.match && entry.match(env)) hits.push(rid);
    });
    hits.forEach(function (rid) { self._settle(rid, null, env); });
  };

  Client.prototype._handle = function (env) {
    var t = env.t;
    if (t === 'event' || t === 'unassigned') this._matchPending(env);
    switch (t) {
      case 'welcome': return this._onWelcome(env);
      case 'msg':
      case 'event':
        return this._incoming(env, 'live');
      case 'conv': {
        var info = this._noteConv(env);
        this._settle(env.rid, null, info);
        this.emit('conv', info);
        return;
      }
      case 'ack': {
        var had = this.outbox.get(env.id);
        if (had) {
          this.outbox.delete(env.id);
          this._saveOutbox();
        }
        this._settle(env.rid, null, env);
        this.emit('ack', env);
        return;
      }
      case 'queue': {
        var q = this.convs.get(env.conv) || { conv: env.conv };
        q.position = env.position;
        this.convs.set(env.conv, q);
        this.emit('queue', env);
        return;
      }
      case 'assigned': {
        this._noteConv({ conv: env.conv, visitor: env.visitor, group: env.group, agent: this.sub, state: 'assigned' });
        this.emit('assigned', env);
        this._entries(env.conv, env.history, 'assigned');
        // The snapshot may stop short of the conversation's head: catch up.
        if (typeof env.seq === 'number' && env.seq > (this.lastSeq.get(env.conv) || 0)) {
          this._resumeOne(env.conv);
        }
        return;
      }
      case 'unassigned':
        this.emit('unassigned', env);
        return;
      case 'bot_chunk':
        // A bot's answer while it streams: not logged, no seq; the finished
        // answer follows as a `msg` with the same `reply_to`.
        if (env.conv && typeof env.text === 'string') this.emit('bot_chunk', env);
        return;
      case 'typing':
        if (env.from !== this.sub) this.emit('typing', env);
        return;
      case 'read':
        this.emit('read', env);
        return;
      case 'history': {
        var conv = env.conv;
        var last = this.lastSeq.get(conv) || 0;
        var msgs = Array.isArray(env.msgs) ? env.msgs : [];
        var older = [];
        var newer = [];
        msgs.forEach(function (m) {
          var e = Object.assign({ conv: conv }, m);
          if (!e.t) e.t = e.ev ? 'event' : 'msg';
          if (typeof e.seq === 'number' && e.seq > last) newer.push(e); else older.push(e);
        });
        var out = { conv: conv, msgs: older, first: env.first, rid: env.rid };
        this._settle(env.rid, null, out);
        this.emit('history', out);
        this._entries(conv, newer, 'history');
        return;
      }
      case 'gap': {
        var before = this.lastSeq.get(env.conv) || 0;
        if (typeof env.first === 'number' && env.first - 1 > before) this.lastSeq.set(env.conv, env.first - 1);
        this.emit('gap', env);
        return;
      }
      case 'resumed':
        this._settle(env.rid, null, env);
        this.emit('resumed', env);
        return;
      case 'status':
        this._settle(env.rid, null, env);
        this.emit('status', env);
        return;
      case 'pong':
      case 'refreshed':
        this._settle(env.rid, null, env);
        return;
      case 'error':
        return this._onError(env);
      case 'closing':
        this.log('server closing: ' + env.code + ' ' + (env.message || ''));
        if (env.reason === 'token_expired') this.failedBeforeWelcome = 2;  // mint before reconnecting
        if (env.reason === 'drain') {
          // The node is draining and still serves us: leave after the jittered delay it gave
          // (its clients spread over the other nodes), then connect again at once.
          var drained = this.ws;
          var me = this;
          setTimeout(function () { if (me.ws === drained) { me.attempt = 0; me.reconnect(); } }, env.retry_ms || 0);
        } else if (typeof env.retry_ms === 'number') {
          this.retryAfterMs = env.retry_ms;  // overload: the close follows; wait at least this long
        }
        this.emit('closing', env);
        return;
      default:
        this.emit('unknown', env);
    }
  };

  Client.prototype._onWelcome = function (env) {
    var self = this;
    this.welcome = env;
    this.gotWelcome = true;
    this.attempt = 0;
    this.failedBeforeWelcome = 0;
    if (env.user) this.sub = env.user;
    if (env.tenant) this.tenant = env.tenant;
    if (env.hb) this.hb = env.hb;
    (env.convs || []).forEach(function (c) { self._noteConv(c); });
    this._setState('ready');
    this.emit('welcome', env);
    this._startHeartbeat();
    this._scheduleRefresh(env.exp);

    // 1. Catch up on every conversation we know (and that isn't over).
    var resumed = {};
    this.convs.forEach(function (info, conv) {
      if (info.state === 'closed' && (self.lastSeq.get(conv) || 0) >= (info.seq || 0)) return;
      resumed[conv] = true;
      self._resumeOne(conv);
    });
    // 2. Resend what the server never acknowledged, with the same ids.
    this.outbox.forEach(function (m) {
      if (!resumed[m.conv] && m.conv) self._resumeOne(m.conv);
      resumed[m.conv] = true;
    });
    this._flushOutbox();
    // 3. Requests made while we were away.
    var q = this.queued;
    this.queued = [];
    q.forEach(function (entry) {
      if (self._send(entry.env)) self.pending.set(entry.env.rid, entry);
      else self.queued.push(entry);
    });
  };

  /* Asks for everything after the last seq seen. Until `resumed` arrives,
   * entries of that conversation are held and then applied sorted by seq,
   * so replayed and live entries can't overtake one another. */
  Client.prototype._resumeOne = function (conv) {
    var self = this;
    if (this.resuming.has(conv)) return;
    var env = { t: 'resume', conv: conv, after: this.lastSeq.get(conv) || 0, rid: this._rid('resume') };
    if (!this._send(env)) return;
    var hold = { entries: [], timer: null };
    this.resuming.set(conv, hold);
    var done = function () { self._endResume(conv, hold); };
    hold.timer = setTimeout(done, 20000); // never hold entries forever
    this.pending.set(env.rid, {
      env: env, retry: false, timer: null,
      resolve: done,
      reject: function (err) {
        done();
        self.emit('resume-failed', { conv: conv, error: err });
      },
    });
  };

  Client.prototype._endResume = function (conv, hold) {
    if (this.resuming.get(conv) !== hold) return;
    this.resuming.delete(conv);
    clearTimeout(hold.timer);
    var list = hold.entries.sort(function (a, b) { return (a.seq || 0) - (b.seq || 0); });
    for (var i = 0; i < list.length; i++) this._entry(list[i], list[i].source || 'resume');
  };

  /* A msg/event frame: held while its conversation resumes, else applied. */
  Client.prototype._incoming = function (env, source) {
    var hold = env.conv && this.resuming.get(env.conv);
    if (hold) {
      env.source = source;
      hold.entries.push(env);
      return;
    }
    this._entry(env, source);
  };

  Client.prototype._onError = function (env) {
    var err = new Error(env.message || env.code || 'error');
    err.code = env.code;
    err.field = env.field;
    err.rid = env.rid;
    if (env.rid && this.outbox.has(env.rid)) {
      var m = this.outbox.get(env.rid);
      var transient = env.code === 'rate_limited' || env.code === 'unavailable';
      if (transient) {
        this._retryOutboxLater();
      } else {
        this.outbox.delete(env.rid);
        this._saveOutbox();
        this.emit('msg-failed', { id: m.id, conv: m.conv, text: m.text, error: err });
      }
    } else if (env.rid && this.pending.has(env.rid)) {
      var entry = this.pending.get(env.rid);
      if (entry.env.t === 'resume' && err.code === 'not_participant') {
        this.convs.delete(entry.env.conv);
        this.emit('conv-gone', { conv: entry.env.conv });
      }
    }
    this._settle(env.rid, err);
    this.emit('error', env);
  };

  Client.prototype._retryOutboxLater = function () {
    var self = this;
    if (this.outboxRetry) return;
    this.outboxRetry = setTimeout(function () {
      self.outboxRetry = null;
      self._flushOutbox();
    }, 1000 + Math.random() * 1000);
  };

  // ---------------------------------------------------------------- outbox

  Client.prototype._outboxKey = function () {
    return this.storageKey ? this.storageKey + '.outbox' : null;
  };

  Client.prototype._loadOutbox = function () {
    var key = this._outboxKey();
    if (!key) return;
    try {
      var list = JSON.parse(storageGet(key) || '[]');
      var self = this;
      list.forEach(function (m) { if (m && m.id && m.conv) self.outbox.set(m.id, m); });
    } catch (e) { /* corrupt: start empty */ }
  };

  Client.prototype._saveOutbox = function () {
    var key = this._outboxKey();
    if (!key) return;
    var list = [];
    this.outbox.forEach(function (m) { list.push(m); });
    storageSet(key, list.length ? JSON.stringify(list) : null);
  };

  Client.prototype._flushOutbox = function () {
    if (this.state !== 'ready') return;
    var self = this;
    this.outbox.forEach(function (m) {
      self._send(self._wireMsg(m));
    });
  };

  Client.prototype._wireMsg = function (m) {
    var env = { t: 'msg', conv: m.conv, id: m.id, text: m.text, rid: m.id };
    if (m.att && m.att.length) env.att = m.att;
    return env;
  };

  // ------------------------------------------------------------ public API

  /* Queues a message; returns its client id. It is sent now if connected and
   * resent after every reconnect until acknowledged. */
  Client.prototype.sendMessage = function (conv, text, options) {
    options = options || {};
    var m = {
      conv: conv,
      id: options.id || uuid(),
      text: text,
      att: options.att || undefined,
      ts: Date.now(),
      from: this.sub,
    };
    this.outbox.set(m.id, m);
    this._saveOutbox();
    this.stopTyping(conv);
    if (this.state === 'ready') this._send(this._wireMsg(m));
    return m.id;
  };

  Client.prototype.unsent = function (conv) {
    var list = [];
    this.outbox.forEach(function (m) { if (!conv || m.conv === conv) list.push(m); });
    return list;
  };

  Client.prototype.open = function (group, meta) {
    var env = { t: 'open' };
    if (group) env.group = group;
    if (meta) env.meta = meta;
    return this.request(env, { retry: true });
  };

  Client.prototype.history = function (conv, before, limit) {
    var env = { t: 'history', conv: conv, limit: limit || 50 };
    if (before) env.before = before;
    return this.request(env);
  };

  /* Settles on the `closed` event (or on `unassigned`, for the agent). */
  Client.prototype.close = function (conv) {
    return this.request({ t: 'close', conv: conv }, {
      match: function (e) {
        return e.conv === conv && (e.t === 'unassigned' || (e.t === 'event' && e.ev === 'closed'));
      },
    });
  };

  Client.prototype.setStatus = function (status, capacity) {
    var env = { t: 'status', status: status };
    if (capacity) env.capacity = capacity;
    return this.request(env);
  };

  Client.prototype.transfer = function (conv, target) {
    var env = { t: 'transfer', conv: conv };
    if (target.to) env.to = target.to;
    if (target.group) env.group = target.group;
    // The reply is the `transferred` event, which the old agent may only see
    // as `unassigned` (it is no longer a participant when the event is logged).
    return this.request(env, {
      match: function (e) {
        return e.conv === conv && (e.t === 'unassigned' || (e.t === 'event' && e.ev === 'transferred'));
      },
    });
  };

  Client.prototype.ping = function () {
    return this.request({ t: 'ping' }, { timeout: 10000 });
  };

  /* Call on every keystroke: sends typing:on at most every `typingEvery` ms
   * and typing:off once the user has been idle for `typingIdle` ms. */
  Client.prototype.typing = function (conv) {
    if (!conv || this.state !== 'ready') return;
    var self = this;
    var t = this.typingState.get(conv) || { on: false, sentAt: 0, timer: null };
    var now = Date.now();
    if (!t.on || now - t.sentAt >= this.typingEvery) {
      if (this._send({ t: 'typing', conv: conv, on: true })) {
        t.on = true;
        t.sentAt = now;
      }
    }
    clearTimeout(t.timer);
    t.timer = setTimeout(function () { self.stopTyping(conv); }, this.typingIdle);
    this.typingState.set(conv, t);
  };

  Client.prototype.stopTyping = function (conv) {
    var t = this.typingState.get(conv);
    if (!t) return;
    clearTimeout(t.timer);
    t.timer = null;
    if (t.on) {
      t.on = false;
      this._send({ t: 'typing', conv: conv, on: false });
    }
  };

  /* Read marker: only moves forward, only sent when it changes. */
  Client.prototype.markRead = function (conv, seq) {
    if (!conv) return;
    seq = seq || this.lastSeq.get(conv) || 0;
    if (!seq || seq <= (this.readSent.get(conv) || 0)) return;
    if (this.state === 'ready' && this._send({ t: 'read', conv: conv, seq: seq })) {
      this.readSent.set(conv, seq);
    }
  };

  Client.prototype.forget = function (conv) {
    this.convs.delete(conv);
    var t = this.typingState.get(conv);
    if (t) clearTimeout(t.timer);
    this.typingState.delete(conv);
  };

  // ------------------------------------------------------------ page helpers

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = v;
        else if (k.slice(0, 2) === 'on' && typeof v === 'function') node.addEventListener(k.slice(2), v);
        else if (k === 'dataset') Object.keys(v).forEach(function (d) { node.dataset[d] = v[d]; });
        else node.setAttribute(k, v === true ? '' : v);
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return node;
  }

  function timeOf(ts) {
    var d = ts ? new Date(ts) : new Date();
    return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  }

  /* Keeps a message list sorted by seq (pending messages last), one node per
   * log seq / client id; returns the node. */
  function MessageList(container) {
    this.container = container;
    this.byId = new Map();
    this.bySeq = new Map();
  }

  MessageList.prototype.clear = function () {
    this.container.textContent = '';
    this.byId.clear();
    this.bySeq.clear();
  };

  MessageList.prototype.has = function (entry) {
    return (entry.seq && this.bySeq.has(entry.seq)) || (entry.id && this.byId.has(entry.id));
  };

  MessageList.prototype.put = function (entry, render) {
    var existing = (entry.id && this.byId.get(entry.id)) || (entry.seq && this.bySeq.get(entry.seq)) || null;
    var fresh = render(entry);
    if (entry.seq) fresh.dataset.seq = entry.seq;
    if (existing) {
      existing.remove();
      if (existing.dataset.id) this.byId.delete(existing.dataset.id);
      if (existing.dataset.seq) this.bySeq.delete(Number(existing.dataset.seq));
    }
    if (entry.id) { fresh.dataset.id = entry.id; this.byId.set(entry.id, fresh); }
    if (entry.seq) this.bySeq.set(entry.seq, fresh);
    this._insert(fresh, entry.seq);
    return fresh;
  };

  MessageList.prototype._insert = function (node, seq) {
    var c = this.container;
    if (!seq) { c.appendChild(node); return; }
    // Walk back from the end: skip pending nodes and those with a larger seq.
    var ref = c.lastElementChild;
    while (ref) {
      var s = Number(ref.dataset.seq || 0);
      if (s && s < seq) break;
      ref = ref.previousElementSibling;
    }
    if (ref) ref.after(node); else c.prepend(node);
  };

  // ------------------------------------------------------------ bot helpers

  var SVG_NS = 'http://www.w3.org/2000/svg';

  /* A small robot head (inline SVG: no icon fonts, no CDN). */
  function botIcon() {
    var svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('class', 'bot-icon');
    svg.setAttribute('aria-hidden', 'true');
    var parts = [
      ['rect', { x: 4, y: 8, width: 16, height: 12, rx: 3.5, fill: 'none', stroke: 'currentColor', 'stroke-width': 2 }],
      ['line', { x1: 12, y1: 4.5, x2: 12, y2: 8, stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round' }],
      ['circle', { cx: 12, cy: 3.5, r: 1.6, fill: 'currentColor' }],
      ['circle', { cx: 9, cy: 13.5, r: 1.6, fill: 'currentColor' }],
      ['circle', { cx: 15, cy: 13.5, r: 1.6, fill: 'currentColor' }],
      ['line', { x1: 9.5, y1: 17, x2: 14.5, y2: 17, stroke: 'currentColor', 'stroke-width': 1.6, 'stroke-linecap': 'round' }],
      ['line', { x1: 2, y1: 12, x2: 2, y2: 16, stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round' }],
      ['line', { x1: 22, y1: 12, x2: 22, y2: 16, stroke: 'currentColor', 'stroke-width': 2, 'stroke-linecap': 'round' }],
    ];
    parts.forEach(function (p) {
      var n = document.createElementNS(SVG_NS, p[0]);
      Object.keys(p[1]).forEach(function (k) { n.setAttribute(k, String(p[1][k])); });
      svg.appendChild(n);
    });
    return svg;
  }

  /* 0..1 -> "87%"; null/undefined -> null. */
  function percent(conf) {
    if (typeof conf !== 'number' || !isFinite(conf)) return null;
    return Math.round(Math.max(0, Math.min(1, conf)) * 100) + '%';
  }

  var HANDOFF_REASONS = {
    low_confidence: 'the bot was not confident enough',
    visitor_asked: 'the visitor asked for a person',
    backend_error: 'the bot backend failed',
    first_chunk_timeout: 'the bot did not answer in time',
    total_timeout: 'the bot answer took too long',
    rate_limited: 'bot rate limit reached',
    busy: 'the bot was busy',
    no_bot: 'no bot is configured',
  };

  function handoffReason(reason) {
    if (!reason) return 'unknown reason';
    return HANDOFF_REASONS[reason] || String(reason).replace(/_/g, ' ');
  }

  /* A bot message (`msg` with role "bot", or a streaming preview).
   * opts: {name, detail (small text after the name), streaming}. */
  function renderBotMsg(e, opts) {
    opts = opts || {};
    var streaming = !!opts.streaming;
    var meta = streaming ? 'typing\u2026' : timeOf(e.ts);
    return el('div', {
      class: 'msg them bot' + (streaming ? ' streaming' : '') + (e.fallback ? ' fallback' : ''),
      dataset: { from: e.from || 'bot', replyTo: e.reply_to !== undefined && e.reply_to !== null ? String(e.reply_to) : '' },
    }, [
      el('div', { class: 'bot-avatar', title: 'Automated answer' }, [botIcon()]),
      el('div', { class: 'bot-body' }, [
        el('div', { class: 'who' }, [
          opts.name || 'Assistant',
          el('span', { class: 'bot-tag', text: 'Bot' }),
          opts.detail ? el('span', { class: 'bot-detail', text: opts.detail }) : null,
        ]),
        el('div', { class: 'bubble', text: e.text || '' }),
        el('div', { class: 'meta', text: meta }),
      ]),
    ]);
  }

  /* Streaming bot answers of one conversation: `bot_chunk` pieces grow a
   * "bot is typing" bubble per `reply_to` (kept at the end of the list), which
   * the final `msg` with the same `reply_to` replaces. */
  function BotStreams(list, render) {
    this.list = list;
    this.render = render;        // ({reply_to, text}) -> node, with a .bubble inside
    this.nodes = new Map();      // reply_to -> {text, node}
    this.answered = 0;           // highest reply_to whose final msg arrived
  }

  BotStreams.prototype.chunk = function (env) {
    var key = env.reply_to;
    if (typeof key === 'number' && key <= this.answered) return null; // late piece of a finished answer
    var s = this.nodes.get(key);
    if (!s) {
      s = { text: '', node: this.render({ reply_to: key, text: '' }) };
      this.nodes.set(key, s);
    }
    s.text += env.text || '';
    var bubble = s.node.querySelector('.bubble');
    if (bubble) bubble.textContent = s.text;
    if (!s.node.isConnected || s.node !== this.list.container.lastElementChild) {
      this.list.container.appendChild(s.node); // previews stay below the log entries
    }
    return s.node;
  };

  /* The final answer to `replyTo` arrived: drop its preview (and older ones). */
  BotStreams.prototype.finish = function (replyTo) {
    if (typeof replyTo === 'number' && replyTo > this.answered) this.answered = replyTo;
    this._drop(function (key) { return key === replyTo || (typeof key === 'number' && key <= replyTo); });
  };

  /* A newer question (seq) supersedes answers still streaming to older ones. */
  BotStreams.prototype.supersede = function (seq) {
    this._drop(function (key) { return typeof key === 'number' && key < seq; });
  };

  BotStreams.prototype.clear = function () {
    this._drop(function () { return true; });
  };

  BotStreams.prototype.active = function () { return this.nodes.size > 0; };

  BotStreams.prototype._drop = function (test) {
    var self = this;
    Array.from(this.nodes.keys()).forEach(function (key) {
      if (!test(key)) return;
      var s = self.nodes.get(key);
      self.nodes.delete(key);
      if (s.node) s.node.remove();
    });
  };

  global.ChatGW = {
    version: PROTOCOL_VERSION,
    uuid: uuid,
    param: param,
    storageGet: storageGet,
    storageSet: storageSet,
    bootstrap: bootstrap,
    mintToken: mintToken,
    Client: Client,
    el: el,
    timeOf: timeOf,
    MessageList: MessageList,
    botIcon: botIcon,
    percent: percent,
    handoffReason: handoffReason,
    renderBotMsg: renderBotMsg,
    BotStreams: BotStreams,
  };
})(typeof window !== 'undefined' ? window : this);
