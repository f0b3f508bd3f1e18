// apollo-cascade.mjs: apply graphql-cascade cascades to Apollo Client's InMemoryCache,
// from a mutation's response and from fraiseshm's cascadeUpdates push.
// One ES module, no build step; imports only `graphql` (Apollo Client depends on it).
//
//   import { applyCascade, applyMutationResult, subscribeCascades } from "./apollo-cascade.mjs";
//   const result = await client.mutate({ mutation, variables });
//   applyMutationResult(client, result);                      // this tab
//   const push = subscribeCascades(client, { url: "wss://host/graphql/ws", token });  // every tab
//
// Shape: graphql-cascade 1.x (specification/13_client_integration.md). Entries carry
// `typename`; `typeName` and `__typename` (older servers) are read too.
//
// What each part of a cascade does to the cache:
//   updated   the entity's fields are written (nested objects that carry __typename and
//             id are written as their own entities); CREATED also evicts the root fields
//             that list entities of that type, since the new one may belong in them
//   deleted   evicted, then cache.gc(); lists drop the dangling reference by themselves
//   invalidations  root fields evicted (EXACT with arguments: that one; EXACT without:
//             every argument set; PREFIX, PATTERN (glob), ALL); watched queries that read
//             them refetch. REFETCH also asks client.refetchQueries for them.
//   typeInvalidations  every cached entity of the type evicted, and every root field
//             that can reach one, so what shows them refetches
// Anything that cannot be written (an unexpected entity shape) is evicted instead:
// a refetch is always correct, a wrong cache never.

import { parse } from "graphql";

const ROOT = "ROOT_QUERY";

export const CASCADE_SELECTION = `{
  updated { typename id operation entity }
  deleted { typename id deletedAt }
  invalidations { queryName arguments queryPattern strategy scope }
  typeInvalidations { typename affectedCount }
  metadata { timestamp transactionId depth affectedCount }
}`;

export const CASCADE_SUBSCRIPTION = `subscription CascadeUpdates($entityTypes: [String!]) {
  cascadeUpdates(entityTypes: $entityTypes) ${CASCADE_SELECTION}
}`;

export function typenameOf(entry) {
  return entry.typename ?? entry.typeName ?? entry.__typename ?? null;
}

function cacheOf(target) {
  return target && target.cache && typeof target.cache.evict === "function" ? target.cache : target;
}

function fieldNameOf(storeFieldName) {
  const paren = storeFieldName.indexOf("(");
  const colon = storeFieldName.indexOf(":");
  let end = storeFieldName.length;
  if (paren >= 0) end = Math.min(end, paren);
  if (colon >= 0) end = Math.min(end, colon);
  return storeFieldName.slice(0, end);
}

function globToRegExp(glob) {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`);
}

// --- building a fragment from the data itself ---------------------------------------

function selectionOf(value, depth) {
  if (depth > 8) return null;
  const objects = (Array.isArray(value) ? value.flat(Infinity) : [value]).filter((v) => v && typeof v === "object");
  if (objects.length === 0) return null;
  const keys = new Map();
  for (const obj of objects) {
    for (const [k, v] of Object.entries(obj)) {
      if (k === "__typename") continue;
      const prev = keys.get(k);
      const sub = v && typeof v === "object" ? selectionOf(v, depth + 1) : null;
      if (prev === undefined || (prev === null && sub !== null)) keys.set(k, sub);
    }
  }
  const fields = [...keys.entries()].map(([k, sub]) => (sub ? `${k} ${sub}` : k));
  return `{ __typename ${fields.join(" ")} }`;
}

function withTypenames(value, typename) {
  // Nested objects keep theirs (the push sends them); the top entity gets the entry's.
  if (!value || typeof value !== "object" || Array.isArray(value)) return value;
  return value.__typename ? value : { ...value, __typename: typename };
}

// --- the cache operations ------------------------------------------------------------

function writeEntity(cache, typename, id, entity) {
  const cacheId = cache.identify({ __typename: typename, id });
  if (!cacheId) return false;
  if (!entity || typeof entity !== "object") return false;
  const data = withTypenames(entity, typename);
  if (data.id === undefined) data.id = id;
  const selection = selectionOf(data, 0);
  const fragment = parse(`fragment CascadeEntity on ${typename} ${selection}`);
  cache.writeFragment({ id: cacheId, fragment, data });
  return true;
}

function rootFields(cache) {
  const root = cache.extract()[ROOT] || {};
  return Object.keys(root).filter((k) => k !== "__typename");
}

function evictRootField(cache, storeFieldName) {
  return cache.evict({ id: ROOT, fieldName: fieldNameOf(storeFieldName) });
}

function matchingRootFields(cache, inv) {
  const name = inv.queryName;
  const fields = rootFields(cache);
  switch (inv.scope) {
    case "ALL":
      return fields;
    case "PATTERN": {
      const re = globToRegExp(inv.queryPattern ?? name ?? "*");
      return fields.filter((f) => re.test(fieldNameOf(f)));
    }
    case "PREFIX":
      return fields.filter((f) => fieldNameOf(f).startsWith(name ?? ""));
    default: // EXACT
      return fields.filter((f) => fieldNameOf(f) === name);
  }
}

function invalidate(cache, inv) {
  let evicted = [];
  if (inv.scope === "EXACT" && inv.queryName && inv.arguments && Object.keys(inv.arguments).length) {
    if (cache.evict({ id: ROOT, fieldName: inv.queryName, args: inv.arguments })) evicted.push(inv.queryName);
    return evicted;
  }
  // A hint without arguments (the server could not name them: the field's result may embed a
  // changed entity) matters to a normalising cache only for lists, whose membership may change.
  // A root field holding one reference shows the entity's current fields, which the cascade's
  // updated entities were just written into (deleted ones evicted, stale ones evicted below).
  const root = inv.scope === "ALL" ? {} : cache.extract()[ROOT] || {};
  for (const f of matchingRootFields(cache, inv)) {
    const value = root[f];
    if (value && typeof value === "object" && !Array.isArray(value) && typeof value.__ref === "string") continue;
    if (evictRootField(cache, f)) evicted.push(fieldNameOf(f));
  }
  return evicted;
}

// Root fields from which an entity of one of `typenames` (or one of `ids`) can be reached.
function rootFieldsReaching(cache, typenames, ids = new Set()) {
  if (typenames.size === 0 && ids.size === 0) return [];
  const store = cache.extract();
  const memo = new Map();
  const hits = (id) => ids.has(id) || typenames.has(id.slice(0, id.indexOf(":")));
  function reaches(value, seen) {
    if (!value || typeof value !== "object") return false;
    if (Array.isArray(value)) return value.some((v) => reaches(v, seen));
    if (typeof value.__ref === "string") {
      const id = value.__ref;
      if (hits(id)) return true;
      if (memo.has(id)) return memo.get(id);
      if (seen.has(id)) return false;
      seen.add(id);
      const result = reaches(store[id], seen);
      memo.set(id, result);
      return result;
    }
    return Object.values(value).some((v) => reaches(v, seen));
  }
  const root = store[ROOT] || {};
  return Object.keys(root).filter((k) => k !== "__typename" && reaches(root[k], new Set()));
}

function invalidateTypes(cache, typenames) {
  if (typenames.size === 0) return;
  for (const f of rootFieldsReaching(cache, typenames)) evictRootField(cache, f);
  for (const id of Object.keys(cache.extract())) {
    const colon = id.indexOf(":");
    if (colon > 0 && typenames.has(id.slice(0, colon))) cache.evict({ id });
  }
}

// The same transaction's cascade arrives more than once: from the mutation's response and
// from the push (and, for its rows, from the server's change notifications). Writing and
// evicting entities again is harmless; evicting root fields again would refetch them again.
// So per cache, each transaction's invalidations are applied once.
const APPLIED = new WeakMap(); // cache -> Map(transactionId -> Set(invalidation key))
const APPLIED_MAX = 512;

function firstTime(cache, tx, key) {
  if (tx === null || tx === undefined) return true;
  let byTx = APPLIED.get(cache);
  if (!byTx) APPLIED.set(cache, (byTx = new Map()));
  let keys = byTx.get(String(tx));
  if (!keys) {
    byTx.set(String(tx), (keys = new Set()));
    if (byTx.size > APPLIED_MAX) byTx.delete(byTx.keys().next().value);
  }
  if (keys.has(key)) return false;
  keys.add(key);
  return true;
}

/**
 * Apply one cascade (the spec's CascadeUpdates) to an InMemoryCache, or to a client's.
 * options.client: an ApolloClient, for REFETCH invalidations.
 * Returns what was done: { written, evicted, invalidated, types }.
 */
export function applyCascade(target, cascade, options = {}) {
  const cache = cacheOf(target);
  const client = options.client ?? (target && target.cache ? target : null);
  const done = { written: 0, evicted: 0, invalidated: [], types: [] };
  if (!cascade) return done;
  const types = new Set();
  const createdTypes = new Set();
  const stale = new Set(); // updated entities that came without their data
  const refetch = [];
  const tx = cascade.metadata ? cascade.metadata.transactionId : null;
  cache.batch({
    update: () => {
      for (const e of cascade.updated ?? []) {
        const typename = typenameOf(e);
        if (!typename || e.id == null) continue;
        let ok = false;
        try {
          ok = writeEntity(cache, typename, String(e.id), e.entity);
        } catch (err) {
          ok = false;
        }
        if (ok) done.written += 1;
        else {
          // No data, or not writable: whatever shows it refetches (evicting the entity alone
          // would only drop it from lists).
          const cacheId = cache.identify({ __typename: typename, id: String(e.id) });
          if (cacheId) stale.add(cacheId);
        }
        if (e.operation === "CREATED" && firstTime(cache, tx, `created:${typename}`)) createdTypes.add(typename);
      }
      for (const e of cascade.deleted ?? []) {
        const typename = typenameOf(e);
        if (!typename || e.id == null) continue;
        if (cache.evict({ id: cache.identify({ __typename: typename, id: String(e.id) }) })) done.evicted += 1;
      }
      for (const inv of cascade.invalidations ?? []) {
        if (!firstTime(cache, tx, JSON.stringify([inv.queryName, inv.arguments, inv.queryPattern, inv.scope]))) continue;
        const names = invalidate(cache, inv);
        done.invalidated.push(...names);
        if (inv.strategy === "REFETCH") refetch.push(...names);
      }
      for (const t of cascade.typeInvalidations ?? []) {
        const typename = typenameOf(t);
        if (typename && firstTime(cache, tx, `type:${typename}`)) types.add(typename);
      }
      // A created entity may belong in lists of its type: they refetch; so does what shows a stale one.
      for (const f of rootFieldsReaching(cache, createdTypes, stale)) {
        if (evictRootField(cache, f)) done.invalidated.push(fieldNameOf(f));
      }
      for (const id of stale) {
        if (cache.evict({ id })) done.evicted += 1;
      }
      invalidateTypes(cache, types);
      done.types = [...types];
    },
  });
  cache.gc();
  if (refetch.length && client && typeof client.refetchQueries === "function") {
    client.refetchQueries({ include: "active" });
  }
  return done;
}

/** A mutation result (client.mutate's): apply every root field's `cascade`. */
export function applyMutationResult(target, result, options = {}) {
  const data = result && result.data;
  const done = [];
  if (!data) return done;
  for (const value of Object.values(data)) {
    if (value && typeof value === "object" && value.cascade) done.push(applyCascade(target, value.cascade, options));
  }
  return done;
}

/**
 * Subscribe to fraiseshm's cascadeUpdates push (graphql-transport-ws over a WebSocket) and
 * apply each cascade to client's cache. After a reconnect the pushes sent meanwhile are
 * lost, so the active queries are refetched. Returns { close(), ready: Promise }.
 *
 * options: url (ws:// or wss://), token (a JWT, sent as Authorization in connection_init),
 * entityTypes (only these types), onCascade(cascade, done), onStatus(status, detail),
 * retry: false to not reconnect, WebSocket (an implementation, default globalThis.WebSocket).
 */
export function subscribeCascades(client, options) {
  const Impl = options.WebSocket ?? globalThis.WebSocket;
  const status = options.onStatus ?? (() => {});
  let socket = null;
  let closed = false;
  let attempts = 0;
  let connectedOnce = false;
  let resolveReady;
  const ready = new Promise((resolve) => { resolveReady = resolve; });

  function connect() {
    socket = new Impl(options.url, "graphql-transport-ws");
    socket.onopen = () => {
      const payload = options.token ? { Authorization: `Bearer ${options.token}` } : {};
      socket.send(JSON.stringify({ type: "connection_init", payload }));
    };
    socket.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (msg.type === "connection_ack") {
        attempts = 0;
        socket.send(JSON.stringify({
          id: "cascade", type: "subscribe",
          payload: { query: CASCADE_SUBSCRIPTION, variables: { entityTypes: options.entityTypes ?? null } },
        }));
        // Pushes sent while disconnected are lost: what is shown may be stale.
        if (connectedOnce) client.refetchQueries({ include: "active" });
        connectedOnce = true;
        status("subscribed");
        resolveReady();
      } else if (msg.type === "next") {
        const cascade = msg.payload && msg.payload.data && msg.payload.data.cascadeUpdates;
        const done = applyCascade(client, cascade, { client });
        if (options.onCascade) options.onCascade(cascade, done);
      } else if (msg.type === "ping") {
        socket.send(JSON.stringify({ type: "pong" }));
      } else if (msg.type === "error") {
        status("error", msg.payload);
      }
    };
    socket.onclose = (event) => {
      status("closed", { code: event.code, reason: event.reason });
      if (closed || options.retry === false || event.code === 4403 || event.code === 4400) return;
      attempts += 1;
      const delay = Math.min(10000, 250 * 2 ** Math.min(attempts, 6)) * (0.5 + Math.random() / 2);
      setTimeout(() => { if (!closed) connect(); }, delay);
    };
  }

  connect();
  return {
    ready,
    close() {
      closed = true;
      if (socket) socket.close(1000, "done");
    },
  };
}
