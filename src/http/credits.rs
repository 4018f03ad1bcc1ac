//! `/v1/tenants/{id}/credits`: the prepaid credit ledger (1 credit = 1 second of calling).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_actors::model::CreditTx;

use super::AppStateRef;
use super::calls::system_problem;
use super::extract::{JsonBody, QueryParams};
use super::features::update_problem;
use super::problem::Problem;
use super::validate::{self, rfc3339};

/// One adjustment beyond a billion seconds (31 years of calling) is a typo.
const AMOUNT_MAX: i64 = 1_000_000_000;
const PAGE_DEFAULT: usize = 50;
const PAGE_MAX: usize = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    amount: i64,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<usize>,
    /// A transaction number: the page starts with the next older one.
    starting_after: Option<u64>,
}

fn tx_json(tx: &CreditTx) -> Value {
    json!({
        "object": "credit_transaction",
        "number": tx.number,
        "amount": tx.amount,
        "reason": tx.reason,
        "balance_after": tx.balance_after,
        "call_id": tx.call_id.map(|id| id.to_string()),
        "created_at": rfc3339(tx.at_ms),
    })
}

/// `POST /v1/tenants/{id}/credits` `{"amount", "reason"}`: positive adds, negative removes
/// (never below zero: 422 `INSUFFICIENT_BALANCE`).
pub async fn adjust(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Adjust>,
) -> Result<Response, Problem> {
    if body.amount == 0 {
        return Err(Problem::invalid("amount", "must not be 0"));
    }
    validate::range("amount", body.amount, -AMOUNT_MAX, AMOUNT_MAX)?;
    validate::text("reason", &body.reason, 200)?;
    let system = state.system()?;
    // The journal answers with the transaction as posted in its order, so the balance is the
    // one right after this adjustment even when charges and other adjustments interleave.
    let Some(transaction) = system.credit(&id, body.amount, body.reason).await.map_err(|e| update_problem(e, &id))? else {
        return Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "a non-zero credit adjustment posted no transaction"));
    };
    let body = json!({"object": "credits", "tenant_id": id, "balance": transaction.balance_after, "transaction": tx_json(&transaction)});
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /v1/tenants/{id}/credits?limit=&starting_after=`: the balance and the transactions,
/// newest first, each with the balance after it.
pub async fn show(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    QueryParams(page): QueryParams<Page>,
) -> Result<Response, Problem> {
    let limit = page.limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Problem::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", format!("limit must be 1-{PAGE_MAX}")).with_field("limit"));
    }
    let ledger = state.system()?.ledger(&id).await.map_err(|e| system_problem(e, "tenant", &id))?;
    let newer_than_cursor = |tx: &&CreditTx| page.starting_after.is_none_or(|after| tx.number < after);
    let mut page_txs: Vec<&CreditTx> = ledger.transactions.iter().rev().filter(newer_than_cursor).take(limit + 1).collect();
    let has_more = page_txs.len() > limit;
    page_txs.truncate(limit);
    Ok(axum::Json(json!({
        "object": "credits",
        "tenant_id": id,
        "balance": ledger.balance,
        "opening_balance": ledger.opening_balance,
        "transactions_total": ledger.transactions_total,
        "data": page_txs.iter().map(|tx| tx_json(tx)).collect::<Vec<_>>(),
        "has_more": has_more,
        "next_starting_after": if has_more { page_txs.last().map(|tx| tx.number) } else { None },
    }))
    .into_response())
}
