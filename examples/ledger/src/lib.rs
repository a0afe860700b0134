//! `ledger`: bank accounts that move money between each other, one grain per account (the
//! key is the account's name).
//!
//! Build every example into a component and run a local silo with them:
//!
//! ```text
//! cargo xtask build
//! cargo xtask demo
//! ```
//!
//! Then, in another terminal:
//!
//! ```text
//! granary call ledger/alice deposit 100                             # 100
//! granary call ledger/alice transfer '{"to": "bob", "amount": 30}'  # 70
//! granary call ledger/bob balance                                   # 30
//! granary call ledger/bob peek '{"account": "alice"}'               # 70
//! granary call ledger/alice mirror '{"account": "bob"}'             # error: call cycle
//! ```
//!
//! (`granary call counter/alice increment 5` calls the `counter` example the same way.)
//!
//! A transfer debits the sender and stages a one-way `credit` to the receiver in the same
//! turn: the silo commits the debit and the message together, then delivers the message
//! exactly once in effect, so money is never created or lost even if the silo crashes
//! in between. The component is `target/wasm32-wasip2/guest/ledger.wasm`.

use granary_sdk::{Ctx, GrainId, grain};
use serde::{Deserialize, Serialize};

/// One account.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Account {
    balance: u64,
}

/// The argument of `transfer`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransferArgs {
    /// The receiving account's name.
    pub to: String,
    /// How much to move.
    pub amount: u64,
}

/// The argument of `peek` and `mirror`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PeekArgs {
    /// The account to ask.
    pub account: String,
}

fn account(name: impl Into<String>) -> GrainId {
    GrainId::new("ledger", name)
}

#[grain]
impl Account {
    /// Adds `amount` out of thin air (for setting up demos) and returns the new balance.
    pub fn deposit(&mut self, amount: u64) -> Result<u64, String> {
        self.add(amount)
    }

    /// The current balance.
    pub fn balance(&self) -> u64 {
        self.balance
    }

    /// Moves `amount` to the account `to` and returns the new balance.
    pub fn transfer(&mut self, ctx: &mut Ctx, args: TransferArgs) -> Result<u64, String> {
        if args.to == ctx.self_id().key {
            return Err("cannot transfer to self".into());
        }
        if args.amount > self.balance {
            return Err(format!(
                "insufficient funds: balance {}, requested {}",
                self.balance, args.amount
            ));
        }
        self.balance -= args.amount;
        // Staged with this turn: committed together with the debit, or not at all.
        ctx.send(&account(args.to), "credit", &args.amount)
            .map_err(|e| e.to_string())?;
        Ok(self.balance)
    }

    /// Receives `amount` from a transfer and returns the new balance.
    pub fn credit(&mut self, amount: u64) -> Result<u64, String> {
        self.add(amount)
    }

    /// Asks another account for its balance (a call that waits for the reply).
    pub fn peek(&self, ctx: &mut Ctx, args: PeekArgs) -> Result<u64, String> {
        ctx.call(&account(args.account), "balance", &())
            .map_err(|e| e.to_string())
    }

    /// Asks `account` to `peek` at this account: the call comes back here while this turn
    /// waits, and turns are not reentrant, so the silo refuses it with a `cycle` error.
    pub fn mirror(&self, ctx: &mut Ctx, args: PeekArgs) -> Result<u64, String> {
        let back = PeekArgs {
            account: ctx.self_id().key,
        };
        ctx.call(&account(args.account), "peek", &back)
            .map_err(|e| e.to_string())
    }

    fn add(&mut self, amount: u64) -> Result<u64, String> {
        self.balance = self
            .balance
            .checked_add(amount)
            .ok_or_else(|| format!("balance overflow: {} + {amount}", self.balance))?;
        Ok(self.balance)
    }
}
