//! The OpenAPI 3.0 document of the operator interface, written by hand: the API is small and
//! its JSON is built by hand too, so a generator would describe nothing more.

use serde_json::{Value, json};

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(description: &str, s: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": s } } })
}

fn error_response(description: &str) -> Value {
    json_body(description, schema("Error"))
}

fn integer(description: &str) -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0, "description": description })
}

fn number(description: &str) -> Value {
    json!({ "type": "number", "description": description })
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn nullable_string(description: &str) -> Value {
    json!({ "type": "string", "nullable": true, "description": description })
}

fn boolean(description: &str) -> Value {
    json!({ "type": "boolean", "description": description })
}

fn nullable_integer(description: &str) -> Value {
    json!({ "type": "integer", "nullable": true, "description": description })
}

fn nullable_number(description: &str) -> Value {
    json!({ "type": "number", "nullable": true, "description": description })
}

/// The operation needs the operator token.
fn token_required() -> Value {
    json!([{ "bearer": [] }])
}

/// A read-only view: open where the node's reads are open (on loopback by default), else it
/// needs the token.
fn token_off_loopback() -> Value {
    json!([{}, { "bearer": [] }])
}

fn refused_401() -> Value {
    let mut r = error_response("No operator token, or a wrong one (field \"authorization\")");
    r["headers"] = json!({ "WWW-Authenticate": {
        "description": "Bearer realm=\"dabs operator\", with error=\"invalid_token\" for a wrong token",
        "schema": { "type": "string" }
    } });
    r
}

fn refused_403() -> Value {
    error_response(
        "This node has no operator token configured, so no request can make the change \
        (field \"authorization\")",
    )
}

/// The OpenAPI 3.0 document served at `/openapi.json`.
pub fn document() -> Value {
    let mut doc = base();
    add_history(&mut doc);
    doc
}

/// The page's history and down members, and its static files.
fn add_history(doc: &mut Value) {
    let paths = &mut doc["paths"];
    paths["/api/history"] = json!({ "get": {
        "summary": "The charts' data: each member's figures, one sample a second over the last 10 minutes, and the farm's",
        "operationId": "getHistory",
        "security": token_off_loopback(),
        "responses": { "200": json_body("Columns aligned on t", schema("History")) }
    } });
    paths["/api/members/{name}"] = json!({ "delete": {
        "summary": "Removes a member that is down (and its history) from this node's views",
        "operationId": "removeMember",
        "security": token_required(),
        "parameters": [{ "name": "name", "in": "path", "required": true,
            "description": "The member's name", "schema": { "type": "string" } }],
        "responses": {
            "200": json_body("Removed", json!({ "type": "object",
                "properties": { "removed": string("The member's name") } })),
            "404": error_response("No member of that name is down (field \"name\")"),
            "409": error_response("It is a live member: only down ones are removed (field \"name\")"),
            "401": refused_401(),
            "403": refused_403(),
        }
    } });
    paths["/assets/{file}"] = json!({ "get": {
        "summary": "The page's static files: its chart code and the uPlot charting library (MIT, uplot.LICENSE)",
        "operationId": "asset",
        "parameters": [{ "name": "file", "in": "path", "required": true,
            "schema": { "type": "string", "enum": crate::charts::asset_names().collect::<Vec<_>>() } }],
        "responses": {
            "200": { "description": "The file (JavaScript, CSS or text)",
                "content": { "*/*": { "schema": { "type": "string" } } } },
            "404": error_response("No such file (field \"file\")"),
        }
    } });
    let farm = &mut paths["/api/farm"]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    farm["properties"]["down"] = json!({ "type": "array", "items": schema("DownMember"),
        "description": "Members that went down, kept until an operator removes them" });
    if let Some(required) = farm["required"].as_array_mut() {
        required.push(json!("down"));
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["NodeView"]["properties"]["zone"] = json!({ "type": "string",
        "enum": ["open", "no_new_clients", "serve_once", "defer"],
        "description": "Its failover zone: its health read against the farm's thresholds (docs/failover.md)" });
    let column = |d: &str| json!({ "type": "array", "items": { "type": "number", "nullable": true }, "description": d });
    schemas["Columns"] = json!({
        "type": "object",
        "description": "One value per second of t; null where there is no sample",
        "properties": {
            "calls_per_s": column("Calls its portions took per second"),
            "p50_ms": column("Median call latency over the second, ms (null: no call)"),
            "p99_ms": column("99th percentile call latency over the second, ms"),
            "load": column("Placement load score"),
            "sessions": column("Client sessions on its announced portions"),
            "portions": column("Portions it announced"),
        }
    });
    schemas["History"] = json!({
        "type": "object",
        "required": ["t", "nodes", "farm"],
        "properties": {
            "t": { "type": "array", "items": { "type": "integer" }, "description": "Seconds, Unix time, oldest first" },
            "nodes": { "type": "object", "additionalProperties": schema("Columns"), "description": "Each member's columns, by name" },
            "farm": { "allOf": [schema("Columns")], "description": "The farm: calls, sessions and portions summed, load the mean, latencies the worst member's (each member's last sample up to 3 s old)" },
            "interval_s": integer("Seconds between samples"),
            "window_s": integer("Samples kept per member"),
        }
    });
    schemas["DownMember"] = json!({
        "type": "object",
        "properties": {
            "name": string("Node name"),
            "mp": string("Its MP address"),
            "operator": nullable_string("Its operator interface, IP:PORT"),
            "started_ms": integer("When it started, Unix ms"),
            "down_ms": integer("When this node saw it go, Unix ms"),
            "last_seen_ms": integer("When it was last heard, Unix ms"),
            "reason": { "type": "string", "enum": ["lease_lapsed", "left"],
                "description": "lease_lapsed: no announcement within the lease (killed, crashed or cut off); left: it announced it was stopping" },
            "why": string("The reason in words"),
        }
    });
}

fn base() -> Value {
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "dabs node operator interface",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "One node of a dabs farm: the farm's members and their statistics, this \
                node's portions, recent events, run-time settings (changes spread to every node \
                without a restart), Prometheus metrics and a live trace of MP traffic. Changes and \
                the trace need the operator token (Authorization: Bearer TOKEN); the read-only \
                views need it too when the node serves them off loopback (docs/operator.md)."
        },
        "paths": {
            "/": { "get": {
                "summary": "The operator web page (self-contained HTML, refreshes every second)",
                "operationId": "page",
                "responses": { "200": {
                    "description": "The page",
                    "content": { "text/html": { "schema": { "type": "string" } } }
                } }
            } },
            "/api/node": { "get": {
                "summary": "This node: statistics, portions, settings and the farm's leader",
                "operationId": "getNode",
                "security": token_off_loopback(),
                "responses": { "200": json_body("This node", json!({
                    "type": "object",
                    "required": ["node", "portions", "counters", "settings", "leader"],
                    "properties": {
                        "node": schema("NodeView"),
                        "portions": { "type": "array", "items": schema("Portion") },
                        "counters": {
                            "type": "object",
                            "description": "This node's event counters since it started (also in /metrics)",
                            "properties": {
                                "spawns": integer("Server portions started"),
                                "moves": integer("Virtual addresses moved to another node"),
                                "failovers": integer("FAILOVER messages sent"),
                                "portions_retired": integer("Portions stopped and removed for having no clients"),
                            }
                        },
                        "settings": schema("Settings"),
                        "leader": nullable_string("The farm's current decider, if known"),
                    }
                })) }
            } },
            "/api/farm": { "get": {
                "summary": "The farm as this node sees it, itself included",
                "operationId": "getFarm",
                "security": token_off_loopback(),
                "responses": { "200": json_body("The farm", json!({
                    "type": "object",
                    "required": ["farm", "leader", "members"],
                    "properties": {
                        "farm": string("Farm name"),
                        "leader": nullable_string("The farm's current decider, if known"),
                        "members": { "type": "array", "items": schema("NodeView"),
                            "description": "Live members, by name" },
                    }
                })) }
            } },
            "/api/events": { "get": {
                "summary": "Recent events (spawns, moves, failovers, members, alerts), oldest first",
                "operationId": "getEvents",
                "security": token_off_loopback(),
                "responses": { "200": json_body("Events",
                    json!({ "type": "array", "items": schema("Event") })) }
            } },
            "/api/settings": {
                "get": {
                    "summary": "The run-time settings in force",
                    "operationId": "getSettings",
                "security": token_off_loopback(),
                    "responses": { "200": json_body("Settings", schema("Settings")) }
                },
                "put": {
                    "summary": "Changes run-time settings; the change reaches every node without a restart",
                    "operationId": "putSettings",
                    "security": token_required(),
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": schema("SettingsPatch") } }
                    },
                    "responses": {
                        "200": json_body("The settings after the change (version increased)",
                            schema("Settings")),
                        "400": error_response("A value out of range, an unknown key, or a body \
                            that is not JSON (field \"body\")"),
                        "401": refused_401(),
                        "403": refused_403(),
                    }
                }
            },
            "/api/trace": { "get": {
                "summary": "Live trace of the datagrams this node's endpoint sends and receives",
                "description": "Newline-delimited JSON, one TraceLine per datagram (or a TraceLag \
                    when the reader fell behind), until the client disconnects.",
                "operationId": "trace",
                "security": token_required(),
                "parameters": [
                    { "name": "session", "in": "query", "required": false,
                      "description": "Only this session byte",
                      "schema": { "type": "integer", "minimum": 0, "maximum": 255 } },
                    { "name": "command", "in": "query", "required": false,
                      "description": "Only this command: a number 0..65535, or a system command name in any case (echo, OPEN_SESSION); an unknown name is refused (400) with the list of names",
                      "schema": { "type": "string" } },
                    { "name": "va", "in": "query", "required": false,
                      "description": "Only this node's portion with this virtual address: datagrams arriving for its queue here and datagrams it sends (ACKs, NAKs and REPLYs included); 404 if no portion here has it",
                      "schema": { "type": "string" } },
                ],
                "responses": {
                    "200": {
                        "description": "A stream of lines",
                        "content": { "application/x-ndjson": { "schema": { "oneOf": [
                            schema("TraceLine"), schema("TraceLag")
                        ] } } }
                    },
                    "400": error_response("A parameter is malformed (a session that is not a number, an unknown command name)"),
                    "404": error_response("No portion with that virtual address on this node"),
                    "401": refused_401(),
                    "403": refused_403(),
                }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "security": token_off_loopback(),
                "responses": { "200": {
                    "description": "OpenMetrics 1.0 text exposition",
                    "content": { (dabs_node::metrics::CONTENT_TYPE): {
                        "schema": { "type": "string" } } }
                } }
            } },
            "/openapi.json": { "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": { "200": json_body("OpenAPI 3.0 document", json!({ "type": "object" })) }
            } },
        },
        "components": {
        "securitySchemes": { "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The operator token: [operator] token or token_file in the node's \
                configuration, or the `token …` line `dabs farm up` prints (also in its farm.json)"
        } },
        "schemas": {
            "NodeView": {
                "type": "object",
                "description": "A node's statistics, as it last announced them (now, for this node)",
                "properties": {
                    "name": string("Node name"),
                    "farm": string("Farm name"),
                    "mp": string("MP (UDP) address, IP:PORT"),
                    "operator": nullable_string("Operator interface address, IP:PORT"),
                    "operator_url": nullable_string("Link to the node's operator page"),
                    "leader": boolean("This node is the farm's decider"),
                    "started_ms": integer("Start time, Unix ms"),
                    "seq": integer("Announcement sequence number"),
                    "cpu_percent": number("Host CPU use, percent"),
                    "mem_total_mb": integer("Host memory, MiB"),
                    "mem_free_mb": integer("Available memory, MiB"),
                    "disk_free_mb": integer("Free disk space, MiB"),
                    "net_bytes_per_s": integer("Network bytes per second, received + sent"),
                    "accepting": boolean("Takes new clients"),
                    "leaving": boolean("Is stopping"),
                    "draining": boolean("The operator drained it: its clients are being moved"),
                    "health": integer("Its own health score, 0 (down) to 100, read against the failover thresholds"),
                    "client_alerts": integer("Alerts raised by clients of its portions since it started (e.g. a FAILOVER they could not verify: someone may be forging the farm's messages)"),
                    "settings_version": integer("Version of the run-time settings it holds"),
                    "accepted": nullable_integer("Clients it has taken on a decider's behalf since it started (the decider's pending = sent − accepted); null from nodes that predate it"),
                    "sessions": integer("Client sessions open on its announced portions"),
                    "load": number("Load score: higher is busier, in clients of a portion as fast as the farm's median (each portion's clients weighted by its service time over the median)"),
                    "portions": { "type": "array", "items": schema("AnnouncedPortion"),
                        "description": "Its announced portions (at most 6, least loaded first)" },
                }
            },
            "AnnouncedPortion": {
                "type": "object",
                "properties": {
                    "app": string("Application"),
                    "va": string("Virtual address mp://FARM/APP/dasp/ID"),
                    "queue": integer("Queue at the node's endpoint"),
                    "sessions": integer("Client sessions open on it now"),
                    "queue_depth": integer("Requests waiting"),
                    "latency_ms": number("Mean request latency, ms"),
                    "timeouts": integer("Lock and timer time-outs in the last 3 s (the starvation window)"),
                    "service_ms": nullable_number("Busy time per request handled, ms, time-weighted mean over about 30 s; null before the first request"),
                }
            },
            "Portion": {
                "type": "object",
                "description": "A server portion running on this node",
                "properties": {
                    "va": string("Virtual address mp://FARM/APP/dasp/ID"),
                    "app": string("Application"),
                    "queue": integer("Queue at the node's endpoint"),
                    "sessions": integer("Client sessions open on it now"),
                    "handled": integer("Requests handled"),
                    "queue_depth": integer("Requests waiting"),
                    "latency_ms": number("Mean request latency, ms"),
                    "service_ms": nullable_number("Busy time per request handled, ms, time-weighted mean over about 30 s; null before the first request"),
                }
            },
            "Event": {
                "type": "object",
                "required": ["at_ms", "text"],
                "properties": {
                    "at_ms": integer("When, Unix ms"),
                    "text": string("What happened"),
                }
            },
            "Settings": {
                "type": "object",
                "properties": {
                    "version": integer("Increases with every change"),
                    "changed_by": string("Node where the last change was made"),
                    "max_message_latency_ms": integer("High-water mark of message latency, ms (1..600000)"),
                    "low_water_ms": integer("Low-water mark, ms (below max_message_latency_ms)"),
                    "failover_threshold": integer("Health (0..100) at or below which a node defers its clients; clients of a configured class keep their class's thresholds"),
                    "connection_threshold": integer("Health (0..100) above which a node admits new clients"),
                    "return_threshold": integer("Health (0..100) above which deferred clients are called back and admitted"),
                    "retire_idle_after_ms": integer("A portion without clients this long is retired (stopped, its record removed), down to its application's minimum; 0: never (0..86400000)"),
                    "apps": { "type": "object", "additionalProperties": schema("AppSettings"),
                        "description": "Per-application records, by name" },
                }
            },
            "AppSettings": {
                "type": "object",
                "properties": {
                    "subgroup": { "type": "array", "items": { "type": "string" },
                        "description": "Nodes allowed to run it (empty: all)" },
                    "max_sessions_per_portion": integer("Sessions that fill a portion (1..1000000)"),
                    "min_free_memory_mb": integer("Less free memory (MiB) makes a node ineligible"),
                    "max_cpu_percent": number("More CPU use (percent, 0 < x <= 100) makes a node ineligible"),
                }
            },
            "SettingsPatch": {
                "type": "object",
                "additionalProperties": false,
                "description": "Any subset of the settings; unknown keys are refused",
                "properties": {
                    "max_message_latency_ms": integer("New high-water mark, ms"),
                    "low_water_ms": integer("New low-water mark, ms"),
                    "failover_threshold": integer("New failover threshold, 0..100"),
                    "connection_threshold": integer("New connection threshold, 0..100"),
                    "return_threshold": integer("New return threshold, 0..100"),
                    "retire_idle_after_ms": integer("New idle time before a portion is retired, ms (0: never)"),
                    "apps": { "type": "object", "additionalProperties": schema("AppPatch"),
                        "description": "Changes per application, by name" },
                }
            },
            "AppPatch": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "subgroup": { "type": "array", "items": { "type": "string" } },
                    "max_sessions_per_portion": integer("New portion size"),
                    "min_free_memory_mb": integer("New memory minimum, MiB"),
                    "max_cpu_percent": number("New CPU ceiling, percent"),
                }
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": { "error": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": string("The offending field as a path (apps.calc.max_cpu_percent), \
                            or \"body\" when the body is not a JSON object"),
                        "message": string("What is wrong and what is expected"),
                    }
                } }
            },
            "TraceLine": {
                "type": "object",
                "description": "One datagram; when it does not decode, only at_ms, dir, peer, bytes \
                    and error are set",
                "properties": {
                    "at_ms": integer("When the endpoint saw it, Unix ms"),
                    "dir": { "type": "string", "enum": ["in", "out"] },
                    "peer": string("The other end (IP:PORT, unix:PATH or inproc:ID)"),
                    "kind": { "type": "string", "nullable": true,
                        "enum": ["request", "ack", "nak", "reply", null] },
                    "command": nullable_integer("Command number"),
                    "command_name": nullable_string("System command name (OPEN_SESSION, ...)"),
                    "session": nullable_integer("Session byte"),
                    "transaction": nullable_integer("Transaction byte"),
                    "dst": nullable_integer("Destination queue"),
                    "src": nullable_integer("Source queue"),
                    "buffer": nullable_integer("Buffer index in a multi-buffer message"),
                    "total": nullable_integer("Buffers in the message"),
                    "payload_len": nullable_integer("Payload bytes"),
                    "encrypted": { "type": "boolean", "nullable": true,
                        "description": "ENCRYPTED flag: the payload is nonce, ciphertext and tag" },
                    "bytes": integer("Datagram bytes"),
                    "latency_ms": nullable_integer("One-way latency from the sent-time stamp (incoming only)"),
                    "error": nullable_string("Why the datagram does not decode"),
                }
            },
            "TraceLag": {
                "type": "object",
                "required": ["lagged"],
                "properties": { "lagged": integer("Datagrams dropped because the reader fell behind") }
            },
        } }
    })
}
