#!/bin/bash
# kafka-run-class.sh <class> [args...]: a Kafka CLI class on a small JVM, warnings to stderr.
# shellcheck disable=SC2086 # KAFKA_OPTS is a list of words
exec java -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC ${KAFKA_OPTS:-} -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2-tools.yaml -cp '/opt/kafka/libs/*' "$@"
