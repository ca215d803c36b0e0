"""A subscriber on the Mosquitto broker at 127.0.0.1:1883, recording what arrives.

The broker is not started by the tests: it runs on the machine (and in CI) as a
service. `MqttSubscriber` connects with paho-mqtt, subscribes to one topic and
returns only once the broker acknowledged the subscription, so nothing published
afterwards can be missed. Imports nothing from watcher.
"""

import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.real.ports import LOOPBACK
from tests.real.waiting import wait_until

BROKER_PORT = 1883
CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_WAIT_SECONDS = 10.0
START_HINT = "start it with `mosquitto -d -c /etc/mosquitto/mosquitto.conf`"


class BrokerUnavailableError(RuntimeError):
    """The broker did not accept a connection and a subscription in time."""


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One message as published: its topic, payload (decoded as UTF-8) and QoS."""

    topic: str
    payload: str
    qos: int
    retain: bool


class MqttSubscriber:
    """Subscribes to `topic` on the local broker; use as a context manager.

    Raises:
        BrokerUnavailableError: no broker answered at 127.0.0.1:1883, or it
            refused the connection or the subscription; the message says how to
            start one.
    """

    def __init__(self, topic: str, port: int = BROKER_PORT) -> None:
        self.topic = topic
        self.port = port
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._messages: list[MqttMessage] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._subscribe_error: str | None = None
        self._connect()

    @property
    def messages(self) -> list[MqttMessage]:
        """Return every message received on the topic, oldest first."""
        with self._lock:
            return list(self._messages)

    def apprise_url(self) -> str:
        """Return the Apprise URL that publishes to this subscriber's topic."""
        return f"mqtt://{LOOPBACK}:{self.port}/{self.topic}"

    def wait_for(
        self, count: int, timeout: float = DEFAULT_WAIT_SECONDS
    ) -> list[MqttMessage]:
        """Block until `count` messages arrived and return them all.

        Raises:
            AssertionError: fewer arrived within `timeout` seconds.
        """
        return wait_until(
            self._arrived,
            lambda: len(self._messages) >= count,
            lambda: list(self._messages),
            timeout=timeout,
            failure=lambda: (
                f"expected {count} MQTT message(s) on {self.topic!r} within {timeout} s, got {self._messages!r}"
            ),
        )

    def stop(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _connect(self) -> None:
        where = f"MQTT broker at {LOOPBACK}:{self.port}"
        try:
            self._client.connect(LOOPBACK, self.port, keepalive=30)
        except OSError as exc:
            msg = f"connect to the {where}: {exc}; {START_HINT}"
            raise BrokerUnavailableError(msg) from exc

        self._client.loop_start()
        if not self._subscribed.wait(CONNECT_TIMEOUT_SECONDS):
            self.stop()
            msg = f"subscribe to {self.topic!r} on the {where}: no answer within {CONNECT_TIMEOUT_SECONDS} s; {START_HINT}"
            raise BrokerUnavailableError(msg)

        if self._subscribe_error is not None:
            self.stop()
            msg = f"subscribe to {self.topic!r} on the {where}: {self._subscribe_error}"
            raise BrokerUnavailableError(msg)

    # paho-mqtt callbacks, called on its network thread.

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if reason.is_failure:
            self._subscribe_error = f"connection refused: {reason}"
            self._subscribed.set()
            return

        # QoS 1 up to the broker: a message Apprise publishes is not lost on
        # the way to us.
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Any,
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self._subscribe_error = f"subscription refused: {', '.join(refused)}"
        self._subscribed.set()

    def _on_message(
        self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage
    ) -> None:
        received = MqttMessage(
            topic=message.topic,
            payload=message.payload.decode("utf-8", errors="replace"),
            qos=message.qos,
            retain=bool(message.retain),
        )
        with self._arrived:
            self._messages.append(received)
            self._arrived.notify_all()
