"""One Snowflake session with the Python connector (4.8.1 or 5.2.0): connect, run statements,
close. Prints one JSON line per step, for the end-to-end tests.

usage: session.py --host H [--port 443] [--protocol https] [options] STATEMENT...

A STATEMENT is SQL text, or a JSON object:
  {"sql": "...", "params": [...]}          qmark bindings
  {"sql": "...", "many": [[...], [...]]}   executemany (array binding)
  {"sql": "...", "tag": "x"}               per-statement QUERY_TAG
  {"sql": "...", "async": true}            execute_async, then get_results_from_sfqid
  {"sql": "...", "abort": true}            execute_async, then abort_query (POST /queries/<id>/abort-request)
  {"sql": "...", "timeout": N}             execute with a timeout (the driver cancels by request id)
  {"sql": "...", "num_statements": 2}      multi-statement; rows of every result set
Lines: {"step": "connect", ...}, then {"step": "statement", "sql", "sfqid", "rowcount",
"rows", "columns"} or {"step": "statement", "sql", "error": {"errno", "sqlstate", "msg",
"sfqid"}}, then {"step": "close"}. With --show-tokens, {"step": "tokens", "token", "master_token"}
(the tokens the driver holds) after connecting and again before closing; with --keep-session the
session is left open (no logout) when the script ends.
"""

import argparse
import datetime
import decimal
import json
import os
import sys
from importlib.metadata import version


def plain(v):
    if isinstance(v, (decimal.Decimal, datetime.date, datetime.datetime, datetime.time)):
        return str(v)
    if isinstance(v, bytes):
        return v.hex()
    return v


def emit(obj):
    print(json.dumps(obj, default=str), flush=True)


def error_of(e):
    return {
        "errno": getattr(e, "errno", None),
        "sqlstate": getattr(e, "sqlstate", None),
        "msg": getattr(e, "raw_msg", None) or str(e),
        "sfqid": getattr(e, "sfqid", None),
        "type": type(e).__name__,
    }


def rows_of(cur, fetch_first=False):
    # 5.x loads the result of get_results_from_sfqid lazily: description is set by a fetch.
    rows = cur.fetchall() if fetch_first else None
    if cur.description is None:
        return None, None
    cols = [d[0] for d in cur.description]
    if rows is None:
        rows = cur.fetchall()
    return cols, [[plain(v) for v in r] for r in rows]


def run(conn, spec):
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        spec = json.loads(spec)
    if isinstance(spec, str):
        spec = {"sql": spec}
    sql = spec["sql"]
    out = {"step": "statement", "sql": sql}
    cur = conn.cursor()
    try:
        kwargs = {}
        if spec.get("tag") is not None:
            kwargs["_statement_params"] = {"QUERY_TAG": spec["tag"]}
        if spec.get("num_statements") is not None:
            kwargs["num_statements"] = spec["num_statements"]
        if spec.get("abort"):
            cur.execute_async(sql, spec.get("params"), **kwargs)
            out["sfqid"] = cur.sfqid
            out["aborted"] = bool(cur.abort_query(cur.sfqid))
            emit(out)
            return
        if spec.get("timeout") is not None:
            kwargs["timeout"] = spec["timeout"]
        if spec.get("async"):
            cur.execute_async(sql, spec.get("params"), **kwargs)
            qid = cur.sfqid
            cur.get_results_from_sfqid(qid)
            out["sfqid"] = qid
        elif "many" in spec:
            cur.executemany(sql, spec["many"], **kwargs)
            out["sfqid"] = cur.sfqid
        else:
            cur.execute(sql, spec.get("params"), **kwargs)
            out["sfqid"] = cur.sfqid
        cols, rows = rows_of(cur, fetch_first=bool(spec.get("async")))
        out["columns"], out["rows"] = cols, rows
        out["rowcount"] = cur.rowcount
        if spec.get("num_statements") is not None:
            sets = [{"columns": cols, "rows": rows, "sfqid": cur.sfqid}]
            while cur.nextset():
                c, r = rows_of(cur)
                sets.append({"columns": c, "rows": r, "sfqid": cur.sfqid})
            out["sets"] = sets
    except Exception as e:  # noqa: BLE001 - report every driver error as data
        out["error"] = error_of(e)
    finally:
        try:
            cur.close()
        except Exception:  # noqa: BLE001
            pass
    emit(out)


def emit_tokens(conn):
    rest = conn.rest
    emit({"step": "tokens", "token": rest.token, "master_token": rest.master_token})


def fresh_key_file():
    import tempfile

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    f = tempfile.NamedTemporaryFile(prefix="snowtrail-jwt-", suffix=".p8", delete=False)
    f.write(pem)
    f.close()
    return f.name


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--protocol", default="https")
    p.add_argument("--account", default="xy12345")
    p.add_argument("--user", default="fake")
    p.add_argument("--password", default="snow")
    p.add_argument("--authenticator")
    p.add_argument("--token")
    p.add_argument("--private-key-file", help="for SNOWFLAKE_JWT; a fresh key is made if absent")
    p.add_argument("--database", default="db1")
    p.add_argument("--schema", default="schema1")
    p.add_argument("--query-tag")
    p.add_argument("--ocsp", choices=["disable", "fail-open"], default="disable")
    p.add_argument("--show-tokens", action="store_true")
    p.add_argument("--keep-session", action="store_true")
    p.add_argument("--proxy", help="an HTTP proxy URL: 5.x takes it as a connection parameter, 4.x from HTTPS_PROXY")
    p.add_argument("statements", nargs="*")
    a = p.parse_args()

    import snowflake.connector

    driver_version = version("snowflake-connector-python")
    kwargs = dict(
        host=a.host,
        port=a.port,
        protocol=a.protocol,
        account=a.account,
        user=a.user,
        database=a.database,
        schema=a.schema,
        paramstyle="qmark",
        login_timeout=60,
        network_timeout=60,
    )
    if a.authenticator:
        kwargs["authenticator"] = a.authenticator
        if a.token:
            kwargs["token"] = a.token
        if a.authenticator.upper() == "SNOWFLAKE_JWT":
            kwargs["private_key_file"] = a.private_key_file or fresh_key_file()
    else:
        kwargs["password"] = a.password
    if a.query_tag:
        kwargs["session_parameters"] = {"QUERY_TAG": a.query_tag}
    if a.proxy:
        if driver_version.startswith("4."):
            os.environ["HTTPS_PROXY"] = a.proxy
        else:
            kwargs["proxy"] = a.proxy
    if driver_version.startswith("4."):
        # 4.x checks OCSP only when asked; there is no network for it here (docs/protocol.md,
        # "TLS trust per driver").
        if a.ocsp == "disable":
            kwargs["disable_ocsp_checks"] = True
        else:
            kwargs["ocsp_fail_open"] = True
    try:
        conn = snowflake.connector.connect(**kwargs)
    except Exception as e:  # noqa: BLE001
        emit({"step": "connect", "ok": False, "version": driver_version, "error": error_of(e)})
        return 1
    emit({"step": "connect", "ok": True, "version": driver_version})
    if a.show_tokens:
        emit_tokens(conn)
    for spec in a.statements:
        run(conn, spec)
    if a.show_tokens:
        emit_tokens(conn)
    if a.keep_session:
        sys.stdout.flush()
        os._exit(0)  # no logout, no cleanup: the session stays open upstream
    try:
        conn.close()
        emit({"step": "close", "ok": True})
    except Exception as e:  # noqa: BLE001
        emit({"step": "close", "ok": False, "error": error_of(e)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
