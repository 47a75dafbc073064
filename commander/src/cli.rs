//! The operator subcommands: `token create`, `user add`,
//! `sentry list|approve|revoke`, `action push|vote|list`.
//!
//! Each one is a single call to the HTTP API of a running commander, with a
//! bearer token. The address comes from `--url`, else from the
//! `DATA_DIR/http.addr` a serving commander leaves behind; the token from
//! `--token` (or `HASHFLEET_TOKEN`), else from `DATA_DIR/admin.token` (the
//! same discovery as `backup`, [`crate::backup_cli`]). Output is for people
//! by default; `--json` prints the API's JSON response instead.
//!
//! Exit codes: 0 on success, 1 when the call fails (the API's
//! `error: CODE: message`, or no commander answering), 64 for bad input
//! caught before anything is sent (invalid JSON, a malformed id, no way to
//! find the commander or the token). Tokens are never printed, except the
//! new enrollment token `token create` exists to show. Passwords are never
//! arguments: `--password-stdin` or a private (0600) `--password-file`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use hashfleet_shared::secure_file;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::app::HTTP_ADDR_FILE;
use crate::backup_cli::{read_admin_token, recorded_addr};

/// Exit code for bad input (as for bad configuration).
const EXIT_USAGE: u8 = 64;

/// The operator subcommands, flattened into the binary's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrollment tokens (through the HTTP API of a running commander).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Users (through the HTTP API; needs an admin token).
    #[command(subcommand)]
    User(UserCommand),
    /// Sentries: list, approve, revoke (through the HTTP API).
    #[command(subcommand)]
    Sentry(SentryCommand),
    /// Approved actions: push, vote, list (through the HTTP API).
    #[command(subcommand)]
    Action(ActionCommand),
}

/// How to reach the API; on every operator subcommand.
#[derive(Debug, Args)]
#[command(
    after_help = "The API is plain HTTP, meant for 127.0.0.1 in this release: reach a remote commander only through an SSH tunnel or a TLS proxy."
)]
pub struct Conn {
    /// Base URL of the commander's HTTP API (plain http:// only), e.g.
    /// http://127.0.0.1:8080. Default: the address in DATA_DIR/http.addr.
    #[arg(long)]
    url: Option<String>,
    /// The commander's data directory: where the URL (http.addr) and the
    /// admin token (admin.token) are found when not given.
    #[arg(long, env = "HASHFLEET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token (admin, login or personal token). Default: DATA_DIR/admin.token.
    #[arg(long, env = "HASHFLEET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON response instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint an enrollment token (shown once) for sentries to enroll with.
    Create {
        /// How many sentries may enroll with it.
        #[arg(long)]
        uses: u32,
        /// How long it is valid, in seconds (at most 30 days).
        #[arg(long)]
        ttl_secs: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from stdin or a 0600 file, never
    /// from an argument (at least 12 characters; one trailing newline is dropped).
    Add {
        /// The new user's name.
        #[arg(long)]
        username: String,
        /// Comma-separated `type:r|w|rw` entries or `role:NAME`, e.g. miner:rw,host:r.
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        /// Make the user an admin (every permission, manages users).
        #[arg(long)]
        admin: bool,
        /// Read the password from standard input.
        #[arg(
            long,
            conflicts_with = "password_file",
            required_unless_present = "password_file"
        )]
        password_stdin: bool,
        /// Read the password from this file (must be private: mode 0600).
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum SentryCommand {
    /// List sentries: id, status, kind, node id, heartbeats, last seen.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a pending sentry.
    Approve {
        /// The sentry id (16 hex digits, as `sentry list` shows).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a sentry for good (it must re-enroll with a new identity).
    Revoke {
        /// The sentry id (16 hex digits, as `sentry list` shows).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Push an action to every device a query selects (your push is the first yes vote).
    Push {
        /// The device query, JSON, e.g. '{"type":"host"}'.
        #[arg(long)]
        query: String,
        /// The action, e.g. runHook.
        #[arg(long)]
        action: String,
        /// The action's parameters, JSON, e.g. '["backup"]'. Default: [].
        #[arg(long)]
        params: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Vote on an action that is voting.
    Vote {
        /// The action id (as `action list` shows).
        id: String,
        /// Approve it.
        #[arg(long, conflicts_with = "no", required_unless_present = "no")]
        yes: bool,
        /// Reject it (one no cancels the action).
        #[arg(long)]
        no: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List actions, newest first.
    List {
        /// Only this state: voting, ready, executing, done or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (1 to 10000; the API's default is 100).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Why a subcommand failed; decides the exit code.
#[derive(Debug)]
enum Failure {
    /// Bad input, found before sending anything: exit 64.
    Usage(String),
    /// The API answered with an error: exit 1.
    Api { code: String, message: String },
    /// Anything else (no answer, unreadable files): exit 1.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage(message.into())
}

/// Runs one operator subcommand; prints its output or `error: …` on stderr.
pub async fn run(command: Command) -> ExitCode {
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Api { code, message }) => {
            eprintln!("error: {code}: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> Result<()> {
    match command {
        Command::Token(TokenCommand::Create {
            uses,
            ttl_secs,
            conn,
        }) => {
            let body = json!({"uses": uses, "ttl_secs": ttl_secs});
            let v = Api::new(&conn)?
                .call(Method::POST, "/enrollment-tokens", Some(body))
                .await?;
            conn.print(&v, |v| {
                // stdout holds only the token, so `$(… token create …)` works.
                eprintln!(
                    "enrollment token for {} sentr{}, valid until {} (shown once):",
                    v["uses"],
                    if v["uses"] == 1 { "y" } else { "ies" },
                    text(&v["expires_at"])
                );
                println!("{}", text(&v["token"]));
            });
        }
        Command::User(UserCommand::Add {
            username,
            permissions,
            admin,
            password_stdin,
            password_file,
            conn,
        }) => {
            // Find the API first, so a missing token fails before a password is read.
            let api = Api::new(&conn)?;
            let password = read_password(password_stdin, password_file.as_deref())?;
            let permissions: Vec<String> = permissions
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect();
            let body = json!({
                "username": username,
                "password": password,
                "permissions": permissions,
                "admin": admin,
            });
            let v = api.call(Method::POST, "/users", Some(body)).await?;
            conn.print(&v, |v| {
                println!(
                    "user {} created: permissions {}{}",
                    text(&v["username"]),
                    list_text(&v["permissions"]),
                    if v["admin"] == true { ", admin" } else { "" }
                );
            });
        }
        Command::Sentry(SentryCommand::List { conn }) => {
            let (v, total) = Api::new(&conn)?.list_sentries().await?;
            conn.print(&v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|s| {
                        vec![
                            text(&s["sentry_id"]),
                            text(&s["status"]),
                            text(&s["kind"]),
                            text(&s["node_id"]),
                            text(&s["heartbeats"]),
                            s["last_seen"].as_str().unwrap_or("never").to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "STATUS", "KIND", "NODE_ID", "HEARTBEATS", "LAST_SEEN"],
                    &rows,
                );
                if let Some(total) = total.filter(|t| *t > rows.len() as u64) {
                    eprintln!("({} of {total} sentries shown)", rows.len());
                }
            });
        }
        Command::Sentry(SentryCommand::Approve { id, conn }) => {
            sentry_change(&conn, &id, "approve").await?;
        }
        Command::Sentry(SentryCommand::Revoke { id, conn }) => {
            sentry_change(&conn, &id, "revoke").await?;
        }
        Command::Action(ActionCommand::Push {
            query,
            action,
            params,
            conn,
        }) => {
            let query = parse_json("--query", &query)?;
            if !query.is_object() {
                return Err(usage(
                    "--query must be a JSON object, e.g. '{\"type\":\"host\"}'",
                ));
            }
            let params = match params {
                Some(p) => parse_json("--params", &p)?,
                None => json!([]),
            };
            let body = json!({"query": query, "action": action, "params": params});
            let v = Api::new(&conn)?
                .call(Method::POST, "/actions", Some(body))
                .await?;
            conn.print(&v, |v| {
                println!("id:           {}", text(&v["id"]));
                println!("state:        {}", text(&v["state"]));
                println!("targets:      {}", items(&v["targets"]).len());
                println!("votes needed: {}", text(&v["req_votes_pos"]));
            });
        }
        Command::Action(ActionCommand::Vote { id, yes, no, conn }) => {
            check_action_id(&id)?;
            debug_assert!(yes != no, "clap requires exactly one of --yes, --no");
            let v = Api::new(&conn)?
                .call(
                    Method::POST,
                    &format!("/actions/{id}/vote"),
                    Some(json!({"approve": yes})),
                )
                .await?;
            conn.print(&v, |v| {
                println!(
                    "action {}: voted {}; state {}, yes votes {} of {} needed",
                    text(&v["id"]),
                    if yes { "yes" } else { "no" },
                    text(&v["state"]),
                    yes_votes(v),
                    text(&v["req_votes_pos"])
                );
            });
        }
        Command::Action(ActionCommand::List { state, limit, conn }) => {
            let mut body = serde_json::Map::new();
            if let Some(s) = state {
                body.insert("state".into(), Value::String(s));
            }
            if let Some(l) = limit {
                body.insert("limit".into(), l.into());
            }
            let v = Api::new(&conn)?
                .call(Method::POST, "/actions/query", Some(Value::Object(body)))
                .await?;
            conn.print(&v, |v| {
                let rows: Vec<Vec<String>> = items(v)
                    .iter()
                    .map(|a| {
                        vec![
                            text(&a["id"]),
                            text(&a["state"]),
                            text(&a["action"]),
                            items(&a["targets"]).len().to_string(),
                            format!("{}/{}", yes_votes(a), text(&a["req_votes_pos"])),
                            text(&a["creator"]),
                            a["created_ms"]
                                .as_u64()
                                .map(crate::http::dto::rfc3339_ms)
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID", "STATE", "ACTION", "TARGETS", "YES", "CREATOR", "CREATED",
                    ],
                    &rows,
                );
            });
        }
    }
    Ok(())
}

async fn sentry_change(conn: &Conn, id: &str, verb: &str) -> Result<()> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(usage(format!(
            "`{}` is not a sentry id: 16 hex digits, as `sentry list` shows",
            id.chars().take(40).collect::<String>()
        )));
    }
    let v = Api::new(conn)?
        .call(Method::POST, &format!("/sentries/{id}/{verb}"), None)
        .await?;
    conn.print(&v, |v| {
        println!("sentry {}: {}", text(&v["sentry_id"]), text(&v["status"]));
    });
    Ok(())
}

/// Action ids are hex, or `TS-BATCH-N` for a batch: keep them inside one path segment.
fn check_action_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "`{}` is not an action id (as `action list` shows)",
            id.chars().take(40).collect::<String>()
        )))
    }
}

fn parse_json(flag: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| usage(format!("{flag} is not valid JSON: {e}")))
}

/// The password from stdin or a private file; one trailing newline dropped.
fn read_password(stdin: bool, file: Option<&Path>) -> Result<String> {
    const MAX: u64 = 4096;
    let bytes = if stdin {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(MAX + 1)
            .read_to_end(&mut buf)
            .map_err(|e| usage(format!("reading the password from stdin: {e}")))?;
        if buf.len() as u64 > MAX {
            return Err(usage(format!(
                "the password on stdin is longer than {MAX} bytes"
            )));
        }
        buf
    } else {
        let path = file.ok_or_else(|| usage("pass --password-stdin or --password-file FILE"))?;
        secure_file::read_private(path, MAX).map_err(|e| usage(e.to_string()))?
    };
    let mut password = String::from_utf8(bytes).map_err(|_| usage("the password is not UTF-8"))?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(usage("the password is empty"));
    }
    Ok(password)
}

impl Conn {
    /// `--json`: the API's response as one line of JSON; else `human`.
    fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{v}");
        } else {
            human(v);
        }
    }
}

/// The resolved API base and token.
struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    fn new(conn: &Conn) -> Result<Api> {
        let base = match &conn.url {
            Some(url) => {
                let url = url.trim().trim_end_matches('/');
                if url.starts_with("https://") {
                    return Err(usage(
                        "--url: HTTPS is not supported yet; the API is plain HTTP on 127.0.0.1 (use an SSH tunnel to reach another machine)",
                    ));
                }
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    usage(format!(
                        "--url {url:?} must start with http://, e.g. http://127.0.0.1:8080"
                    ))
                })?;
                if rest.is_empty() || rest.contains('/') {
                    return Err(usage(format!(
                        "--url {url:?} must be http://HOST:PORT, without a path"
                    )));
                }
                url.to_string()
            }
            None => {
                let dir = conn.data_dir.as_deref().ok_or_else(|| {
                    usage("pass --url http://HOST:PORT or --data-dir DIR (of a running commander)")
                })?;
                match recorded_addr(dir)? {
                    Some(addr) => format!("http://{addr}"),
                    None => {
                        return Err(Failure::Other(anyhow::anyhow!(
                            "no {HTTP_ADDR_FILE} in {}: is `hashfleet-commander serve --data-dir {}` running? pass --url",
                            dir.display(),
                            dir.display()
                        )))
                    }
                }
            }
        };
        let token = match (&conn.token, &conn.data_dir) {
            (Some(t), _) if !t.trim().is_empty() => t.trim().to_string(),
            (Some(_), _) => return Err(usage("--token (or HASHFLEET_TOKEN) is empty")),
            (None, Some(dir)) => read_admin_token(dir)?,
            (None, None) => return Err(usage(
                "pass --token TOKEN (or HASHFLEET_TOKEN), or --data-dir DIR to use DIR/admin.token",
            )),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // User creation hashes a password (Argon2id) and may queue.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Failure::Other(anyhow::anyhow!("building the HTTP client: {e}")))?;
        Ok(Api {
            base,
            token,
            client,
        })
    }

    /// One request to `/api/v1{path}`; the parsed JSON body of a 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        self.request(method, path, body).await.map(|(v, _)| v)
    }

    async fn list_sentries(&self) -> Result<(Value, Option<u64>)> {
        self.request(Method::GET, "/sentries", None).await
    }

    /// Like `call`, plus the `X-Total-Count` header if any.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(Value, Option<u64>)> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.map_err(|e| {
            if e.is_connect() {
                Failure::Other(anyhow::anyhow!(
                    "no commander answers at {}: is `hashfleet-commander serve` running? pass --url",
                    self.base
                ))
            } else if e.is_timeout() {
                Failure::Other(anyhow::anyhow!(
                    "{method} {url}: no answer in time from the commander"
                ))
            } else {
                Failure::Other(anyhow::anyhow!("{method} {url}: {e}"))
            }
        })?;
        let status = response.status();
        let total = response
            .headers()
            .get("x-total-count")
            .and_then(|h| h.to_str().ok())
            .and_then(|t| t.parse().ok());
        let text = response.text().await.map_err(|e| {
            Failure::Other(anyhow::anyhow!("{method} {url}: reading the answer: {e}"))
        })?;
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            return Err(api_error(status, json.as_ref(), &text));
        }
        let v = json.ok_or_else(|| {
            Failure::Other(anyhow::anyhow!(
                "{method} {url}: the answer ({status}) is not JSON; is {} a Hashfleet commander?",
                self.base
            ))
        })?;
        Ok((v, total))
    }
}

/// `{"code","message"}` from an error body; the status when there is none.
fn api_error(status: StatusCode, json: Option<&Value>, text: &str) -> Failure {
    let field = |name: &str| {
        json.and_then(|v| v[name].as_str())
            .map(str::to_string)
            .filter(|s| !s.is_empty())
    };
    let code = field("code").unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
    let message = field("message").unwrap_or_else(|| {
        let t = text.trim();
        if t.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            t.chars().take(500).collect()
        }
    });
    Failure::Api { code, message }
}

/// A JSON value as plain text: strings without quotes, null as "-".
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn list_text(v: &Value) -> String {
    let parts: Vec<String> = items(v).iter().map(text).collect();
    if parts.is_empty() {
        "(none)".to_string()
    } else {
        parts.join(",")
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn yes_votes(action: &Value) -> usize {
    action["votes"]
        .as_object()
        .map(|m| m.values().filter(|v| **v == true).count())
        .unwrap_or(0)
}

/// Left-aligned columns, two spaces apart; the header is always printed.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_uses_the_body_or_the_status() {
        let body = json!({"code": "ERR_NOT_FOUND", "message": "no sentry"});
        match api_error(StatusCode::NOT_FOUND, Some(&body), "") {
            Failure::Api { code, message } => {
                assert_eq!(code, "ERR_NOT_FOUND");
                assert_eq!(message, "no sentry");
            }
            other => panic!("{other:?}"),
        }
        match api_error(StatusCode::METHOD_NOT_ALLOWED, None, "") {
            Failure::Api { code, message } => {
                assert_eq!(code, "HTTP 405");
                assert_eq!(message, "Method Not Allowed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_stay_in_one_path_segment() {
        assert!(check_action_id("0123abcd").is_ok());
        assert!(check_action_id("1700000000000-b1-0").is_ok());
        assert!(matches!(
            check_action_id("../users"),
            Err(Failure::Usage(_))
        ));
        assert!(matches!(check_action_id(""), Err(Failure::Usage(_))));
    }
}
