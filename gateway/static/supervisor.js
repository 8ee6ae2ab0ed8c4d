/* supervisor.js - the supervisor page (gateway/supervisor_http.py, docs/operations.md).
 *
 * Plain JavaScript, no build step, no dependencies. Asks for a token (the admin token, or a
 * tenant's service token), keeps it in this tab's sessionStorage (never in a URL), and polls
 * GET /admin/tenants/{tenant}/supervisor every 2 s, one request at a time. Every value from the
 * server goes into the page as text (textContent), never as HTML.
 */
(function () {
  'use strict';

  var POLL_MS = 2000;
  var LONG_WAIT_MS = 60000; // a wait past this is shown in red
  var TOKEN_KEY = 'chatgw.supervisor.token';
  var TENANT_KEY = 'chatgw.supervisor.tenant';

  var $ = function (id) { return document.getElementById(id); };
  var run = 0; // bumped at each (re)start: an older poll loop sees it and stops
  var timer = null;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') node.textContent = attrs[k];
      else if (k === 'className') node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function store(key, value) {
    try {
      if (value === null) sessionStorage.removeItem(key); else sessionStorage.setItem(key, value);
    } catch (e) { /* storage off: the token lives only in the field */ }
  }

  function stored(key) {
    try { return sessionStorage.getItem(key) || ''; } catch (e) { return ''; }
  }

  // 42 s, 3 min 05 s, 2 h 04 min
  function formatWait(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + String(s % 60).padStart(2, '0') + ' s';
    return Math.floor(m / 60) + ' h ' + String(m % 60).padStart(2, '0') + ' min';
  }

  function setState(state, label) {
    var pill = $('conn');
    pill.setAttribute('data-state', state);
    pill.textContent = label;
  }

  function showError(text) {
    var box = $('error');
    box.textContent = text;
    box.classList.toggle('hidden', !text);
  }

  // ---------------------------------------------------------------- rendering

  function renderCounts(counts) {
    ['bot', 'queued', 'assigned'].forEach(function (k) {
      $('count-' + k).textContent = k in counts ? String(counts[k]) : '\u2013'; // unknown: a dash
    });
  }

  function renderQueues(queues) {
    var box = $('queues');
    box.textContent = '';
    var total = 0;
    queues.forEach(function (q) {
      total += q.length;
      var rows = q.waiting.map(function (w, i) {
        var wait = el('td', { className: 'num sv-wait' + (w.waited_ms >= LONG_WAIT_MS ? ' long' : ''),
          text: formatWait(w.waited_ms) });
        return el('tr', { className: 'waiting-row', 'data-conv': w.conv, 'data-waited-ms': String(w.waited_ms) }, [
          el('td', { className: 'num', text: String(i + 1) }),
          el('td', { text: w.visitor || '?' }),
          el('td', { className: 'mono', text: w.conv, title: w.conv }),
          wait,
        ]);
      });
      var more = q.length - q.waiting.length;
      var title = q.group + ': ' + q.length + ' waiting' + (more > 0 ? ' (first ' + q.waiting.length + ' shown)' : '');
      var head = el('thead', {}, [el('tr', {}, ['#', 'Visitor', 'Conversation', 'Waiting for'].map(function (h, i) {
        return el('th', { text: h, className: i === 0 || i === 3 ? 'num' : '' });
      }))]);
      box.appendChild(el('section', { className: 'queue', 'data-group': q.group }, [
        el('h3', { text: title }),
        el('table', { className: 'sv' }, [head, el('tbody', {}, rows)]),
      ]));
    });
    if (!queues.length) box.appendChild(el('div', { className: 'sv-empty', text: 'Nobody is waiting.' }));
    $('queue-total').textContent = total ? total + ' waiting' : '';
  }

  function loadBar(load, capacity) {
    var ratio = capacity > 0 ? Math.min(1, load / capacity) : 1;
    var bar = el('span', { className: 'sv-bar' + (ratio >= 1 ? ' full' : ratio >= 0.75 ? ' busy' : ''),
      role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': String(capacity), 'aria-valuenow': String(load) },
      [el('span')]);
    bar.firstChild.style.width = Math.round(ratio * 100) + '%';
    return bar;
  }

  function renderAgents(agents) {
    var body = $('agents');
    body.textContent = '';
    agents.forEach(function (a) {
      var shown = a.connected ? a.status : 'offline';
      var status = el('span', { className: 'pill ' + shown, text: a.connected ? a.status : a.status + ', not connected' });
      body.appendChild(el('tr', { className: 'agent-row', 'data-agent': a.id, 'data-status': a.status,
        'data-connected': String(a.connected), 'data-load': String(a.load), 'data-capacity': String(a.capacity) }, [
        el('td', { className: 'mono', text: a.id }),
        el('td', {}, [status]),
        el('td', {}, [loadBar(a.load, a.capacity), el('span', { className: 'load', text: a.load + ' / ' + a.capacity })]),
        el('td', { text: a.groups.join(', ') }),
      ]));
    });
    if (!agents.length) body.appendChild(el('tr', {}, [el('td', { className: 'sv-empty', colspan: '4', text: 'No agents yet.' })]));
    // Who can take a conversation now: online, connected, and below capacity.
    var available = agents.filter(function (a) { return a.available && a.load < a.capacity; }).length;
    $('agent-total').textContent = agents.length ? available + ' of ' + agents.length + ' can take a conversation' : '';
  }

  // {agent: 1, visitor: 3} -> "1 agent, 3 visitors"
  function roles(counts) {
    return Object.keys(counts).sort().map(function (r) { return counts[r] + ' ' + r + (counts[r] === 1 ? '' : 's'); }).join(', ');
  }

  function renderNodes(nodes, thisNode) {
    var body = $('nodes');
    body.textContent = '';
    nodes.forEach(function (n) {
      body.appendChild(el('tr', { className: 'node-row', 'data-node': n.id }, [
        el('td', { className: 'mono', text: n.id }),
        el('td', { className: 'num', text: (n.heartbeat_age_ms / 1000).toFixed(1) + ' s ago' }),
        el('td', { className: 'small muted', text: n.self ? 'answering this page' : '' }),
      ]));
    });
    $('node-total').textContent = nodes.length + (nodes.length === 1 ? ' node' : ' nodes');
    var line = '';
    if (thisNode) { // the admin token only: this node's connections, all tenants and this one's
      line = 'This node holds ' + thisNode.connections + ' connections (' + (roles(thisNode.by_role) || 'none') +
        '); of this tenant: ' + (roles(thisNode.tenant_by_role) || 'none') + '.';
    }
    $('this-node').textContent = line;
  }

  // A refused token: what it showed before is no longer known to be true.
  function clear() {
    render({ conversations: {}, queues: [], agents: [], nodes: [], tenant: '', now_ms: 0, node: '' });
    $('updated').textContent = '';
    $('node-total').textContent = '';
  }

  function render(data) {
    renderCounts(data.conversations);
    renderQueues(data.queues);
    renderAgents(data.agents);
    renderNodes(data.nodes, data.this_node);
    $('truncated').classList.toggle('hidden', !data.truncated);
    $('who').textContent = data.tenant;
    $('updated').textContent = 'updated ' + new Date(data.now_ms).toLocaleTimeString() + ' by ' + data.node;
  }

  // ---------------------------------------------------------------- polling

  function stop() {
    run += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  // What an answer that is not 200 means, and whether asking again can help.
  function refusal(status, tenant) {
    if (status === 401) return { text: 'The token was refused (401): enter the admin token or this tenant\u2019s service token.', retry: false };
    if (status === 403) return { text: 'This token may not read the supervisor\u2019s data (403).', retry: false };
    if (status === 404) return { text: 'This token cannot see tenant \u201c' + tenant + '\u201d (404).', retry: false };
    if (status === 503) return { text: 'Shared state is unavailable (503): retrying every 2 s.', retry: true };
    return { text: 'The node answered ' + status + ': retrying every 2 s.', retry: true };
  }

  function poll(mine, token, tenant) {
    if (mine !== run) return;
    var url = '/admin/tenants/' + encodeURIComponent(tenant) + '/supervisor';
    fetch(url, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store', credentials: 'omit' })
      .then(function (res) {
        if (mine !== run) return null;
        if (res.ok) return res.json().then(function (data) {
          if (mine !== run) return;
          render(data);
          showError('');
          setState('ready', 'live');
          timer = setTimeout(function () { poll(mine, token, tenant); }, POLL_MS);
        });
        var why = refusal(res.status, tenant);
        showError(why.text);
        setState('waiting', why.retry ? 'retrying' : 'refused');
        if (why.retry) timer = setTimeout(function () { poll(mine, token, tenant); }, POLL_MS);
        else {
          clear();
          if (res.status === 401) store(TOKEN_KEY, null); // a refused token is not kept
        }
        return null;
      })
      .catch(function () {
        if (mine !== run) return;
        showError('The node is unreachable: retrying every 2 s.');
        setState('waiting', 'unreachable');
        timer = setTimeout(function () { poll(mine, token, tenant); }, POLL_MS);
      });
  }

  function start() {
    var token = $('token').value.trim();
    var tenant = $('tenant').value.trim();
    if (!token || !tenant) return;
    stop();
    store(TOKEN_KEY, token);
    store(TENANT_KEY, tenant);
    showError('');
    setState('connecting', 'loading');
    poll(run, token, tenant);
  }

  $('login').addEventListener('submit', function (ev) {
    ev.preventDefault(); // never a request with the token in it other than ours
    start();
  });

  $('forget').addEventListener('click', function () {
    stop();
    store(TOKEN_KEY, null);
    $('token').value = '';
    showError('');
    setState('stopped', 'no token');
  });

  // The tenant: ?tenant=, else the last one watched in this tab, else the node's default (/api/config).
  var fromUrl = new URLSearchParams(location.search).get('tenant');
  $('token').value = stored(TOKEN_KEY);
  $('tenant').value = fromUrl || stored(TENANT_KEY);
  var ready = $('tenant').value ? Promise.resolve() : fetch('/api/config', { cache: 'no-store' })
    .then(function (res) { return res.ok ? res.json() : {}; })
    .then(function (cfg) { if (!$('tenant').value && cfg.tenant) $('tenant').value = cfg.tenant; })
    .catch(function () { /* the field stays empty: the operator types it */ });
  ready.then(function () { if ($('token').value) start(); });
}());
