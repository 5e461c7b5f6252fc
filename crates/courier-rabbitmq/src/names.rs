//! How Courier's queues and message types map to RabbitMQ exchanges and queues.

use std::time::Duration;

use courier_core::{Error, Result};

/// The broker-side names of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    ns: String,
}

/// The longest AMQP name (a short string).
const MAX_NAME: usize = 255;

impl Names {
    pub(crate) fn new(namespace: &str) -> Self {
        Self { ns: namespace.to_owned() }
    }

    /// Checks a Courier queue name: non-empty, not one of the engine's own names, short enough once prefixed.
    pub(crate) fn check_queue(&self, queue: &str) -> Result<()> {
        if queue.is_empty() {
            return Err(Error::config("a queue name cannot be empty"));
        }
        if queue == "registry" || queue.starts_with("delay.") {
            return Err(Error::config(format!(
                "queue name '{queue}' is reserved by the RabbitMQ engine ('registry' and 'delay.*'); choose another"
            )));
        }
        if self.dlq(queue).len() > MAX_NAME {
            return Err(Error::config(format!(
                "queue name '{queue}' is too long for RabbitMQ once prefixed with the namespace (255 bytes at most)"
            )));
        }
        Ok(())
    }

    /// `<ns>.<queue>`.
    pub(crate) fn queue(&self, queue: &str) -> String {
        format!("{}.{queue}", self.ns)
    }

    /// `<ns>.<queue>.dlq`.
    pub(crate) fn dlq(&self, queue: &str) -> String {
        format!("{}.{queue}.dlq", self.ns)
    }

    /// The fanout exchange of one message type: `<ns>.event.<type>`.
    pub(crate) fn exchange(&self, message_type: &str) -> Result<String> {
        let name = format!("{}.event.{message_type}", self.ns);
        if name.len() > MAX_NAME || message_type.is_empty() {
            return Err(Error::config(format!("message type '{message_type}' cannot name a RabbitMQ exchange")));
        }
        Ok(name)
    }

    /// The headers exchange expired delayed messages go through: `<ns>.delayed`.
    pub(crate) fn delayed_exchange(&self) -> String {
        format!("{}.delayed", self.ns)
    }

    /// The delay queue holding messages for `bucket_ms`: `<ns>.delay.<ms>`.
    pub(crate) fn delay_queue(&self, bucket_ms: u64) -> String {
        format!("{}.delay.{bucket_ms}", self.ns)
    }

    /// The stream recording Courier's queues: `<ns>.registry`.
    pub(crate) fn registry(&self) -> String {
        format!("{}.registry", self.ns)
    }
}

/// Rounds a delay up to two significant digits in milliseconds (137 ms -> 140, 1234 ms -> 1300), so a handful of
/// delay queues serve every backoff, and a message is never delivered earlier than asked.
pub(crate) fn bucket(delay: Duration) -> u64 {
    let ms = delay.as_millis().min(u128::from(u32::MAX)) as u64;
    let ms = ms.max(1) + u64::from(!delay.as_nanos().is_multiple_of(1_000_000));
    let mut step = 1;
    while ms / step >= 100 {
        step *= 10;
    }
    ms.div_ceil(step) * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_up_to_two_digits() {
        let b = |ms| bucket(Duration::from_millis(ms));
        assert_eq!(b(0), 1);
        assert_eq!(b(7), 7);
        assert_eq!(b(99), 99);
        assert_eq!(b(137), 140);
        assert_eq!(b(140), 140);
        assert_eq!(b(1234), 1300);
        assert_eq!(b(299_001), 300_000);
        assert_eq!(bucket(Duration::from_micros(99_500)), 100);
    }

    #[test]
    fn names_are_prefixed_and_checked() {
        let n = Names::new("ns");
        assert_eq!(n.queue("orders"), "ns.orders");
        assert_eq!(n.dlq("orders"), "ns.orders.dlq");
        assert_eq!(n.exchange("shop.order.placed.v1").unwrap(), "ns.event.shop.order.placed.v1");
        assert!(n.check_queue("registry").is_err());
        assert!(n.check_queue("delay.100").is_err());
        assert!(n.check_queue(&"x".repeat(300)).is_err());
        assert!(n.check_queue("orders.replies.abc").is_ok());
    }
}
