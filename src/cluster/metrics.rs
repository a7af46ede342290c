//! Cluster metrics (`mqbridge_cluster_*`): records produced and consumed by
//! topic kind, failures, and the live nodes seen.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopicLabels {
    /// `messages`, `retained` or `nodes`.
    pub topic: &'static str,
}

#[derive(Clone)]
pub struct ClusterMetrics {
    /// `mqbridge_cluster_produced_records_total{topic}`: records Kafka acknowledged.
    pub produced: Family<TopicLabels, Counter>,
    /// `mqbridge_cluster_produce_failures_total{topic}`: records Kafka
    /// refused or never acknowledged (the PUBLISH they carried was refused).
    pub produce_failures: Family<TopicLabels, Counter>,
    /// `mqbridge_cluster_consumed_records_total{topic}`: records read from other nodes.
    pub consumed: Family<TopicLabels, Counter>,
    /// `mqbridge_cluster_undecodable_records_total`: records skipped because
    /// they could not be decoded (a newer node's format, or not ours).
    pub undecodable: Counter,
    /// `mqbridge_cluster_nodes`: nodes with a recent heartbeat, this one included.
    pub nodes: Gauge,
    /// `mqbridge_cluster_produce_duration_seconds`: from a batch's records
    /// handed to the producer to Kafka's acknowledgement of all of them
    /// (what a PUBACK waits for in cluster mode).
    pub produce_duration: Histogram,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            produced: Family::default(),
            produce_failures: Family::default(),
            consumed: Family::default(),
            undecodable: Counter::default(),
            nodes: Gauge::default(),
            // 0.1 ms .. ~3 s
            produce_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
        }
    }
}

impl ClusterMetrics {
    pub fn new(r: &mut Registry) -> ClusterMetrics {
        let m = ClusterMetrics::default();
        r.register(
            "mqbridge_cluster_produced_records",
            "Cluster records acknowledged by Kafka, by topic",
            m.produced.clone(),
        );
        r.register(
            "mqbridge_cluster_produce_failures",
            "Cluster records Kafka refused or did not acknowledge, by topic",
            m.produce_failures.clone(),
        );
        r.register(
            "mqbridge_cluster_consumed_records",
            "Cluster records read from the other nodes, by topic",
            m.consumed.clone(),
        );
        r.register(
            "mqbridge_cluster_undecodable_records",
            "Cluster records skipped because they could not be decoded",
            m.undecodable.clone(),
        );
        r.register_with_unit(
            "mqbridge_cluster_produce_duration",
            "Time from a batch of cluster records handed to the producer to Kafka acknowledging them all",
            prometheus_client::registry::Unit::Seconds,
            m.produce_duration.clone(),
        );
        r.register(
            "mqbridge_cluster_nodes",
            "Cluster nodes with a recent heartbeat, this one included",
            m.nodes.clone(),
        );
        m
    }

    pub fn topic(topic: &'static str) -> TopicLabels {
        TopicLabels { topic }
    }
}
