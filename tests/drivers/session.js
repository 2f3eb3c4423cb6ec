// One Snowflake session with the Node snowflake-sdk: connect, run statements, close.
// Prints one JSON line per step, like session.py, for the end-to-end tests.
//
// usage: node session.js --host H [--port 443] [--protocol https] [options] STATEMENT...
// A STATEMENT is SQL text or a JSON object {"sql", "params", "async", "tag", "num_statements"}.
// Lines: {"step":"connect",...}, {"step":"statement","sql","sfqid","rowcount","rows","columns"}
// or {"step":"statement","sql","error":{"errno","sqlstate","msg","sfqid"}}, {"step":"close"}.
'use strict';

const snowflake = require('snowflake-sdk');

function parseArgs(argv) {
  const opts = {
    host: null, port: 443, protocol: 'https', account: 'xy12345', user: 'fake',
    password: 'snow', authenticator: null, token: null, database: 'db1', schema: 'schema1',
    queryTag: null, statements: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => argv[++i];
    switch (a) {
      case '--host': opts.host = next(); break;
      case '--port': opts.port = Number(next()); break;
      case '--protocol': opts.protocol = next(); break;
      case '--account': opts.account = next(); break;
      case '--user': opts.user = next(); break;
      case '--password': opts.password = next(); break;
      case '--authenticator': opts.authenticator = next(); break;
      case '--token': opts.token = next(); break;
      case '--database': opts.database = next(); break;
      case '--schema': opts.schema = next(); break;
      case '--query-tag': opts.queryTag = next(); break;
      case '--ocsp': next(); break;
      default: opts.statements.push(a);
    }
  }
  return opts;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function errorOf(err, stmt) {
  let sfqid = err && err.data && err.data.queryId;
  if (!sfqid && stmt && typeof stmt.getQueryId === 'function') {
    try { sfqid = stmt.getQueryId(); } catch (_) { /* none */ }
  }
  return {
    errno: err && err.code !== undefined ? Number(err.code) || err.code : null,
    sqlstate: err ? err.sqlState || null : null,
    msg: err ? err.message : String(err),
    sfqid: sfqid || null,
    type: err && err.name,
  };
}

function plain(v) {
  if (v === null || v === undefined) return null;
  if (v instanceof Date) return v.toISOString();
  if (typeof v === 'object' && typeof v.toJSON === 'function') return v.toJSON();
  return v;
}

function execute(conn, spec) {
  return new Promise((resolve) => {
    const out = { step: 'statement', sql: spec.sql };
    const options = {
      sqlText: spec.sql,
      complete: (err, stmt, rows) => {
        if (err) {
          out.error = errorOf(err, stmt);
          resolve(out);
          return;
        }
        out.sfqid = stmt.getQueryId();
        const cols = stmt.getColumns();
        out.columns = cols ? cols.map((c) => c.getName()) : null;
        out.rows = (rows || []).map((r) => out.columns.map((c) => plain(r[c])));
        const updated = stmt.getNumUpdatedRows();
        out.rowcount = typeof updated === "number" && updated >= 0 ? updated : out.rows.length;
        resolve(out);
      },
    };
    if (spec.params) options.binds = spec.params;
    const params = {};
    if (spec.tag !== undefined) params.QUERY_TAG = spec.tag;
    if (spec.num_statements !== undefined) params.MULTI_STATEMENT_COUNT = spec.num_statements;
    if (Object.keys(params).length) options.parameters = params;
    if (spec.async) {
      options.asyncExec = true;
      options.complete = async (err, stmt) => {
        if (err) {
          out.error = errorOf(err, stmt);
          resolve(out);
          return;
        }
        const qid = stmt.getQueryId();
        try {
          const s = await conn.getResultsFromQueryId({ queryId: qid });
          const rows = [];
          await new Promise((res, rej) => {
            s.streamRows().on('data', (r) => rows.push(r)).on('end', res).on('error', rej);
          });
          out.sfqid = qid;
          const cols = s.getColumns();
          out.columns = cols ? cols.map((c) => c.getName()) : null;
          out.rows = rows.map((r) => out.columns.map((c) => plain(r[c])));
          out.rowcount = rows.length;
        } catch (e) {
          out.error = errorOf(e, stmt);
        }
        resolve(out);
      };
    }
    conn.execute(options);
  });
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  snowflake.configure({ logLevel: 'ERROR', disableOCSPChecks: true });
  const cfg = {
    account: a.account,
    username: a.user,
    host: a.host,
    port: a.port,
    protocol: a.protocol,
    accessUrl: `${a.protocol}://${a.host}:${a.port}`,
    database: a.database,
    schema: a.schema,
    timeout: 60000,
  };
  if (a.authenticator) {
    cfg.authenticator = a.authenticator;
    cfg.token = a.token;
  } else {
    cfg.password = a.password;
  }
  if (a.queryTag) cfg.queryTag = a.queryTag;
  const conn = snowflake.createConnection(cfg);
  const version = require('snowflake-sdk/package.json').version;
  try {
    await new Promise((res, rej) => conn.connect((err) => (err ? rej(err) : res())));
  } catch (err) {
    emit({ step: 'connect', ok: false, version, error: errorOf(err) });
    return 1;
  }
  emit({ step: 'connect', ok: true, version });
  for (const raw of a.statements) {
    const spec = raw.trim().startsWith('{') ? JSON.parse(raw) : { sql: raw };
    emit(await execute(conn, spec));
  }
  try {
    await new Promise((res, rej) => conn.destroy((err) => (err ? rej(err) : res())));
    emit({ step: 'close', ok: true });
  } catch (err) {
    emit({ step: 'close', ok: false, error: errorOf(err) });
  }
  return 0;
}

main().then((code) => process.exit(code), (err) => {
  emit({ step: 'fatal', error: String(err && err.stack) });
  process.exit(2);
});
