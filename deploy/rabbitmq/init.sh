#!/bin/sh
# One-shot init for the development broker (the rabbitmq-init service): creates the consumer's user
# from .env with read access, and the annotations stream, through the management HTTP API. Idempotent.
set -eu
api="http://rabbitmq:15672/api"
admin="${RABBITMQ_ADMIN_USER}:${RABBITMQ_ADMIN_PASSWORD}"
queue=$(printf '%s' "${RABBITMQ_QUEUE_NAME}" | sed 's/%/%25/g; s/ /%20/g')

put() {
    curl --fail --silent --show-error --user "$admin" --header "content-type: application/json" \
        --request PUT --data "$2" "$api/$1"
}

put "users/${RABBITMQ_USER}" "{\"password\":\"${RABBITMQ_PASSWORD}\",\"tags\":\"\"}"
# The consumer reads the stream and stores its offset (a write on the stream's own resource).
put "permissions/%2F/${RABBITMQ_USER}" "{\"configure\":\"^${RABBITMQ_QUEUE_NAME}\$\",\"write\":\"^${RABBITMQ_QUEUE_NAME}\$\",\"read\":\".*\"}"
put "queues/%2F/${queue}" '{"durable":true,"arguments":{"x-queue-type":"stream","x-max-age":"30D"}}'
echo "rabbitmq-init: user ${RABBITMQ_USER} and stream ${RABBITMQ_QUEUE_NAME} ready"
