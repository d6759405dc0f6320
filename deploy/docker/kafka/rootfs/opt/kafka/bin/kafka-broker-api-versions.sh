#!/bin/bash
# As in the Kafka distribution: the broker's supported API versions (compose's healthcheck).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
