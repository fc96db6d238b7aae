//! The order's state machine. Every change of status goes through
//! [`Status::can_become`]; the store refuses anything else.
//!
//! ```text
//! pending ──► reserved ──► paid ──► fulfilled
//!    │           │  │        │
//!    ▼           ▼  ▼        ▼
//! cancelled ◄────┘ payment_failed   refunded
//! ```

use serde::{Deserialize, Serialize};

/// Where an order is.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Recorded, stock not yet reserved.
    Pending,
    /// Stock reserved; the payment is under way.
    Reserved,
    /// Charged.
    Paid,
    /// Shipped.
    Fulfilled,
    /// Cancelled before payment; stock released.
    Cancelled,
    /// The payment was declined or could not be made; stock released.
    PaymentFailed,
    /// Cancelled after payment; charge refunded, stock released.
    Refunded,
}

impl Status {
    /// Every status.
    pub const ALL: [Self; 7] = [
        Self::Pending,
        Self::Reserved,
        Self::Paid,
        Self::Fulfilled,
        Self::Cancelled,
        Self::PaymentFailed,
        Self::Refunded,
    ];

    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Reserved => "reserved",
            Self::Paid => "paid",
            Self::Fulfilled => "fulfilled",
            Self::Cancelled => "cancelled",
            Self::PaymentFailed => "payment_failed",
            Self::Refunded => "refunded",
        }
    }

    /// The status with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether an order may go from `self` to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Reserved | Cancelled)
                | (Reserved, Paid | PaymentFailed | Cancelled)
                | (Paid, Fulfilled | Refunded)
        )
    }

    /// Whether nothing can happen to the order any more.
    pub fn is_terminal(self) -> bool {
        Self::ALL.into_iter().all(|next| !self.can_become(next))
    }

    /// Whether the order holds stock.
    pub fn holds_stock(self) -> bool {
        matches!(self, Self::Reserved | Self::Paid | Self::Fulfilled)
    }
}

/// A change of status the machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order cannot go from {} to {}", .from.name(), .to.name())]
pub struct IllegalTransition {
    /// Where it is.
    pub from: Status,
    /// Where it was asked to go.
    pub to: Status,
}

/// Checks one step.
pub fn transition(from: Status, to: Status) -> Result<Status, IllegalTransition> {
    if from.can_become(to) {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        /// Any sequence of requested changes, applied where allowed, walks
        /// only along the machine's edges, never leaves a terminal state,
        /// never returns to an earlier one, and holds stock exactly while
        /// reserved, paid or fulfilled.
        #[test]
        fn orders_move_only_along_the_edges(steps in proptest::collection::vec(status(), 0..40)) {
            let mut at = Status::Pending;
            let mut seen = vec![at];
            for next in steps {
                match transition(at, next) {
                    Ok(to) => {
                        prop_assert!(!at.is_terminal());
                        prop_assert!(!seen.contains(&to), "{:?} visited twice", to);
                        at = to;
                        seen.push(at);
                    }
                    Err(e) => prop_assert_eq!(e, IllegalTransition { from: at, to: next }),
                }
            }
            // Every path ends in a state reachable from pending.
            prop_assert!(seen.windows(2).all(|w| w[0].can_become(w[1])));
        }

        /// Names round-trip.
        #[test]
        fn names_round_trip(s in status()) {
            prop_assert_eq!(Status::from_name(s.name()), Some(s));
        }
    }

    #[test]
    fn the_terminal_states_are_the_ends() {
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                Status::Fulfilled,
                Status::Cancelled,
                Status::PaymentFailed,
                Status::Refunded
            ]
        );
        assert!(!Status::Paid.can_become(Status::Cancelled));
        assert!(!Status::Reserved.can_become(Status::Pending));
    }
}
