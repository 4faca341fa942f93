//! A text service on loopback for the tests (axum): OpenAI-style `POST /v1/chat/completions`
//! and DeepL-style `POST /v2/translate`. It "translates" by prefixing (`[de] text`), counts the
//! answers it sent per text, and injects faults in order: 429 with `Retry-After`, 500,
//! malformed JSON and answers slower than the client's timeout. As a judge it compares two
//! answers (prefers the longer) or rates one MT-Bench answer (`[[1 + chars % 10]]`, or a reply
//! without a rating where asked to).

#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault to answer the next request with.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with `Retry-After: seconds`.
    TooMany(f64),
    /// 500.
    ServerError,
    /// 200 with a body that is not the protocol's JSON.
    Malformed,
    /// A correct answer after this long (longer than the client's timeout).
    Slow(Duration),
}

#[derive(Debug, Default)]
pub struct LlmState {
    /// Every request received.
    pub requests: usize,
    /// Successful answers sent, by the text that was translated.
    pub answered: BTreeMap<String, usize>,
    /// Faults for the next requests, in order.
    pub faults: VecDeque<Fault>,
    /// How long every normal answer takes.
    pub delay: Duration,
    /// The valid API key.
    pub key: String,
    /// Texts containing this are refused with 400.
    pub refuse_containing: Option<String>,
    /// Authorization headers seen.
    pub authorizations: Vec<String>,
    /// MT-Bench replies still to send without a rating.
    pub unrated: usize,
    /// MT-Bench prompts containing this always get a reply without a rating.
    pub unrated_containing: Option<String>,
    /// MT-Bench judge requests received.
    pub ratings_asked: usize,
}

pub struct LlmServer {
    pub url: String,
    pub state: Arc<Mutex<LlmState>>,
    _server: crate::support::Loopback,
}

impl LlmServer {
    pub fn start(key: &str) -> LlmServer {
        let state = Arc::new(Mutex::new(LlmState {
            key: key.to_string(),
            ..LlmState::default()
        }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            async move { handle(state, uri, headers, body).await }
        });
        let server = crate::support::Loopback::serve(app);
        LlmServer {
            url: server.url.clone(),
            state,
            _server: server,
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, LlmState> {
        self.state.lock().expect("state")
    }
}

fn answer(deepl: bool, text: &str) -> Response {
    let body = if deepl {
        json!({"translations": [{"detected_source_language": "EN", "text": format!("[DE] {text}")}]})
    } else {
        json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("[de] {text}")}, "finish_reason": "stop"}]})
    };
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn handle(
    state: Arc<Mutex<LlmState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let deepl = uri.path() == "/v2/translate";
    if !deepl && uri.path() != "/v1/chat/completions" {
        return (StatusCode::NOT_FOUND, "no such route").into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = if deepl {
        request["text"][0].as_str().unwrap_or_default().to_string()
    } else {
        request["messages"][1]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let system = request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    let mt_bench = !deepl && (text.contains("\"[[rating]]\"") || system.contains("\"[[rating]]\""));
    if !deepl && !mt_bench && system.contains("judge") {
        return judge_answer(&state, &headers, &text);
    }
    let (fault, delay) = {
        let mut s = state.lock().expect("state");
        s.requests += 1;
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        s.authorizations.push(auth.clone());
        let scheme = if deepl { "DeepL-Auth-Key" } else { "Bearer" };
        if auth != format!("{scheme} {}", s.key) {
            return (
                StatusCode::UNAUTHORIZED,
                json!({"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}).to_string(),
            )
                .into_response();
        }
        if s.refuse_containing
            .as_ref()
            .is_some_and(|bad| text.contains(bad.as_str()))
        {
            return (
                StatusCode::BAD_REQUEST,
                json!({"error": {"message": "content refused"}}).to_string(),
            )
                .into_response();
        }
        (s.faults.pop_front(), s.delay)
    };
    match fault {
        Some(Fault::TooMany(seconds)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", seconds.to_string())],
            "rate limited",
        )
            .into_response(),
        Some(Fault::ServerError) => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        Some(Fault::Malformed) => (
            [("content-type", "application/json")],
            "{\"choices\": [ {\"mess",
        )
            .into_response(),
        Some(Fault::Slow(wait)) => {
            tokio::time::sleep(wait).await;
            answer(deepl, &text)
        }
        None if mt_bench => rate(&state, &text),
        None => {
            tokio::time::sleep(delay).await;
            *state
                .lock()
                .expect("state")
                .answered
                .entry(text.clone())
                .or_default() += 1;
            answer(deepl, &text)
        }
    }
}

/// A judge that prefers the longer answer (A on ties), for `evaluate`'s judge tests.
fn judge_answer(state: &Arc<Mutex<LlmState>>, headers: &HeaderMap, question: &str) -> Response {
    let mut s = state.lock().expect("state");
    s.requests += 1;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {}", s.key) {
        return (StatusCode::UNAUTHORIZED, "bad key").into_response();
    }
    let a = between(question, "Answer A:\n", "\n\nAnswer B:\n");
    let b = between(question, "\n\nAnswer B:\n", "\n\nWhich answer is better?");
    let verdict = if a.chars().count() >= b.chars().count() {
        "A"
    } else {
        "B"
    };
    answer_text(verdict)
}

/// The rating the MT-Bench judge gives an answer: 1 + its length in characters mod 10.
pub fn expected_rating(answer: &str) -> f64 {
    (1 + answer.chars().count() % 10) as f64
}

/// An MT-Bench judgment: the rated answer is the single answer, or the second turn's.
fn rate(state: &Arc<Mutex<LlmState>>, prompt: &str) -> Response {
    let mut s = state.lock().expect("state");
    s.ratings_asked += 1;
    let unrated = s
        .unrated_containing
        .as_ref()
        .is_some_and(|t| prompt.contains(t.as_str()));
    if unrated || s.unrated > 0 {
        s.unrated = s.unrated.saturating_sub(usize::from(!unrated));
        return answer_text("Die Antwort ist schwer zu bewerten.");
    }
    let answer = if prompt.contains("<|The Start of Assistant A's Conversation with User|>") {
        let last = prompt.rfind("### Assistant A:\n").map_or(0, |i| i + 17);
        between(
            &prompt[last..],
            "",
            "\n\n<|The End of Assistant A's Conversation",
        )
    } else {
        between(
            prompt,
            "[The Start of Assistant's Answer]\n",
            "\n[The End of Assistant's Answer]",
        )
    };
    answer_text(&format!(
        "Kurz erklärt: passt. Rating: [[{}]]",
        expected_rating(answer)
    ))
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map_or(0, |i| i + start.len());
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    &text[from..to]
}

fn answer_text(text: &str) -> Response {
    let body =
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]});
    ([("content-type", "application/json")], body.to_string()).into_response()
}
