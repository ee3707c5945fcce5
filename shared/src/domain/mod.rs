//! Domain newtypes: values that are checked once at the edge and then trusted.
//!
//! Every constructor is a `parse` that rejects what the rest of the system must
//! never see (an empty message id, a phone number with letters). Inner fields
//! are private so that nothing can build an unchecked value later.

mod ids;
mod msisdn;
mod outcome;
mod provider;

pub use ids::{EventId, MessageId};
pub use msisdn::Msisdn;
pub use outcome::Outcome;
pub use provider::Provider;
