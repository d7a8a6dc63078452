"""A single-node KRaft Kafka broker run from Maven Central jars: no Docker, no tarball.

For a broker with data folder D and log folder L::

    D/server.properties, D/log4j*.properties  rendered on every start
    D/storage/                                log.dirs, formatted once
    D/kafka.version                           the release that formatted the storage
    D/broker.pid
    L/server.log (rolling), L/stdout.log       broker log, JVM output

The jars of each release are resolved once with Maven into ``settings.dist_dir/<version>/lib``
and shared by every state folder. Nothing here is global: tests start private brokers on other
ports in a temporary folder.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from string import Template

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra import proc
from tapstream.errors import StackError
from tapstream.settings import SUPPORTED_KAFKA_VERSIONS, KafkaSettings

logger = logging.getLogger(__name__)

LOG4J2_VERSION = "2.24.3"  # the log4j 2 line Kafka 4.1 ships in its tarball
SLF4J1_VERSION = "1.7.36"  # Kafka 3.9 and 4.1 both compile against the SLF4J 1.7 API
MAVEN_TIMEOUT_S = 900


def template(name: str) -> Template:
    """A file from infra/templates as a ``$name`` template."""
    return Template(resources.files("infra").joinpath("templates", name).read_text())


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise StackError(f"not a Kafka version: {version!r}")
    return int(head)


def _dependency(group: str, artifact: str, version: str) -> str:
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
    )


def render_pom(version: str) -> str:
    """The POM whose runtime classpath is broker ``version`` plus its logging backend."""
    if _major(version) >= 4:
        # 4.x logs through log4j 2; its SLF4J API is still 1.7, so the 1.x bridge it is.
        logging_deps = [
            _dependency("org.apache.logging.log4j", name, LOG4J2_VERSION)
            for name in ("log4j-slf4j-impl", "log4j-core", "log4j-api")
        ]
    else:
        logging_deps = [_dependency("org.slf4j", "slf4j-reload4j", SLF4J1_VERSION)]
    logging_deps.append(_dependency("org.slf4j", "slf4j-api", SLF4J1_VERSION))
    return template("kafka-pom.xml").substitute(version=version, logging="\n".join(logging_deps))


def render_server_properties(settings: KafkaSettings, storage_dir: Path) -> str:
    """server.properties of the single-node KRaft broker."""
    extra = ""
    if _major(settings.version) >= 4:
        extra = (
            "share.coordinator.state.topic.replication.factor=1\n"
            "share.coordinator.state.topic.min.isr=1\n"
        )
    return template("kafka-server.properties").substitute(
        version=settings.version,
        heap_mb=settings.heap_mb,
        cleaner_buffer=cleaner_buffer_bytes(settings.heap_mb),
        port=settings.port,
        controller_port=settings.controller_port,
        storage_dir=storage_dir,
        extra=extra,
    )


def cleaner_buffer_bytes(heap_mb: int) -> int:
    """The log cleaner's dedupe buffer: an eighth of the heap.

    Kafka's default, 128 MiB, is allocated in one piece when the cleaner starts; in a small
    heap (256 MiB for the test brokers) that piece sometimes cannot be found and the JVM
    exits on OutOfMemoryError. An eighth still holds over a million keys per cleaning pass,
    far more than the compacted topics here (employees, device status, consumer offsets) carry.
    """
    return heap_mb * 1024 * 1024 // 8


def render_log_config(version: str, log_dir: Path) -> tuple[str, str, str]:
    """(file name, content, JVM flag) of the logging configuration for ``version``."""
    if _major(version) >= 4:
        name, flag = "log4j2.properties", "-Dlog4j2.configurationFile="
    else:
        name, flag = "log4j.properties", "-Dlog4j.configuration=file:"
    content = template(f"kafka-{name}").substitute(log_dir=log_dir)
    return name, content, flag


def resolve_classpath(settings: KafkaSettings) -> Path:
    """The lib folder holding every jar of broker ``settings.version``; Maven runs only once."""
    home = settings.dist_dir.expanduser() / settings.version
    lib, done = home / "lib", home / "RESOLVED"
    if done.exists():
        return lib
    with proc.locked(home / ".lock"):
        if done.exists():  # another process resolved it while we waited
            return lib
        _run_maven(settings, home)
        (home / "lib.partial").rename(lib)
        done.write_text(f"{settings.version}\n")
    return lib


def _run_maven(settings: KafkaSettings, home: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (`mvn`) is needed once per Kafka version: run infra/bootstrap.sh")
    if settings.version not in SUPPORTED_KAFKA_VERSIONS:
        logger.warning("Kafka %s is not among the tested %s", settings.version, SUPPORTED_KAFKA_VERSIONS)
    staging = home / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(home / "lib", ignore_errors=True)
    pom = home / "pom.xml"
    pom.write_text(render_pom(settings.version))
    cmd = [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    if settings.maven_repo is not None:
        cmd.append(f"-Dmaven.repo.local={settings.maven_repo.expanduser()}")
    logger.info("resolving Kafka %s jars with Maven into %s (once per version)", settings.version, home)
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        raise StackError(f"Maven did not resolve Kafka {settings.version} in {MAVEN_TIMEOUT_S} s") from err
    output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    if done.returncode != 0:
        raise StackError(f"Maven could not resolve Kafka {settings.version} (network? proxy?):\n{output}")
    if not (staging / f"kafka_2.13-{settings.version}.jar").exists():
        raise StackError(f"Maven finished but kafka_2.13-{settings.version}.jar is missing:\n{output}")
    logger.info("resolved %d jars in %.1f s", len(list(staging.glob("*.jar"))), time.monotonic() - started)


def new_cluster_id() -> str:
    """A KRaft cluster id as Kafka makes them: 16 random bytes, base64url, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # Kafka avoids ids that read as a command-line flag
            return cid


def find_java() -> str:
    """Path of a Java 17+ ``java`` (Kafka 4 needs 17; 3.9 runs on it too)."""
    java = shutil.which("java")
    if java is None:
        raise StackError("Java 17+ is needed to run Kafka: run infra/bootstrap.sh")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    found = re.search(r'version "(\d+)', out)
    if found is None or int(found.group(1)) < 17:
        raise StackError(f"Kafka needs Java 17+, {java} is: {out.splitlines()[0] if out else '?'}")
    return java


def answers_metadata(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True if a broker at ``bootstrap`` returns cluster metadata within ``timeout_s``."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    try:
        return bool(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException:
        return False


class KafkaBroker:
    """One local KRaft broker+controller on 127.0.0.1:settings.port / settings.controller_port."""

    def __init__(self, settings: KafkaSettings, data_dir: Path, log_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.storage_dir = data_dir / "storage"
        self.properties_file = data_dir / "server.properties"
        self.pid_file = data_dir / "broker.pid"
        self.version_file = data_dir / "kafka.version"
        self.stdout_file = log_dir / "stdout.log"
        self._stdout_start = 0  # where this start's JVM output begins in the appended file

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def version(self) -> str:
        return self.settings.version

    def pid(self) -> int | None:
        """Pid of this broker's JVM if it is running."""
        pid = proc.read_pid(self.pid_file)
        if pid is None or not proc.pid_alive(pid):
            return None
        command = proc.cmdline(pid)
        # A recycled pid belongs to some other program: it is not our broker.
        if command and ("kafka.Kafka" not in command or str(self.properties_file) not in command):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout_s: float = 60) -> None:
        """Start the broker (format its storage first if new); return once it serves metadata.

        Returns at once when it already runs with the same settings.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with proc.locked(self.data_dir / ".start.lock"):
            formatted = self._check_storage_version()
            if self.is_running():
                self._check_running_config()
                self._wait_ready(timeout_s)
                return
            self._refuse_busy_ports()
            lib = resolve_classpath(self.settings)
            java = find_java()
            log_flag = self._write_config()
            if not formatted:
                self._format(java, lib, log_flag)
            self._launch(java, lib, log_flag)
            self._wait_ready(timeout_s)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the broker: SIGTERM (clean shutdown), then SIGKILL after ``timeout_s`` seconds."""
        pid = self.pid()
        if pid is not None:
            logger.info("stopping Kafka (pid %d)", pid)
            proc.terminate(pid, timeout_s)
        self.pid_file.unlink(missing_ok=True)

    def _check_storage_version(self) -> bool:
        """True if the storage is formatted (by this version; another version is an error)."""
        if not (self.storage_dir / "meta.properties").exists():
            return False
        made_by = self.version_file.read_text().strip() if self.version_file.exists() else "unknown"
        if made_by != self.version:
            raise StackError(
                f"the Kafka storage in {self.storage_dir} was formatted by Kafka {made_by}, "
                f"not {self.version}: run `tapstream stack down --wipe` (deletes all topics) "
                f"or set TAPSTREAM_KAFKA__VERSION={made_by}"
            )
        return True

    def _check_running_config(self) -> None:
        wanted = render_server_properties(self.settings, self.storage_dir)
        current = self.properties_file.read_text() if self.properties_file.exists() else ""
        if current != wanted:
            raise StackError(
                "the running Kafka broker was started with other settings (ports, heap): "
                "run `tapstream stack down` first"
            )

    def _refuse_busy_ports(self) -> None:
        for port in (self.settings.port, self.settings.controller_port):
            if proc.port_open(port):
                raise StackError(
                    f"port {port} is taken by another program (not this Kafka broker): "
                    "free it, or set TAPSTREAM_KAFKA__PORT / TAPSTREAM_KAFKA__CONTROLLER_PORT"
                )

    def _write_config(self) -> str:
        self.properties_file.write_text(render_server_properties(self.settings, self.storage_dir))
        name, content, flag = render_log_config(self.version, self.log_dir)
        (self.data_dir / name).write_text(content)
        return flag + str(self.data_dir / name)

    def _format(self, java: str, lib: Path, log_flag: str) -> None:
        cluster_id = new_cluster_id()
        logger.info("formatting Kafka %s storage in %s", self.version, self.storage_dir)
        cmd = [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", log_flag, "-cp", f"{lib}/*",
               "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.properties_file)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{(done.stdout + done.stderr).strip()}")
        self.version_file.write_text(f"{self.version}\n")

    def _launch(self, java: str, lib: Path, log_flag: str) -> None:
        cmd = [java, f"-Xmx{self.settings.heap_mb}m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
               "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               f"-Dkafka.logs.dir={self.log_dir}", log_flag, "-cp", f"{lib}/*",
               "kafka.Kafka", str(self.properties_file)]
        self._stdout_start = self.stdout_file.stat().st_size if self.stdout_file.exists() else 0
        pid = proc.spawn_detached(cmd, self.stdout_file, cwd=self.data_dir)
        self.pid_file.write_text(f"{pid}\n")
        logger.info("started Kafka %s (pid %d) on %s", self.version, pid, self.bootstrap)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise self._startup_error("Kafka exited during start-up")
            if proc.port_open(self.settings.port) and answers_metadata(self.bootstrap, 1.0):
                return
            time.sleep(0.2)
        raise self._startup_error(f"Kafka did not answer on {self.bootstrap} within {timeout_s:.0f} s")

    def _startup_error(self, what: str) -> StackError:
        """``what`` went wrong, with the last lines of server.log and of this start's JVM output:
        a JVM that dies abruptly (out of memory, a crash) says why there, not in server.log."""
        server = proc.tail(self.log_dir / "server.log", lines=10)
        jvm = proc.tail(self.stdout_file, lines=5, start=self._stdout_start)
        if "OutOfMemoryError" in jvm:
            what += f": out of memory with a {self.settings.heap_mb} MiB heap, raise TAPSTREAM_KAFKA__HEAP_MB"
        parts = [server] if server else []
        if jvm:
            parts.append(f"JVM output ({self.stdout_file}):\n{jvm}")
        return StackError(f"{what}; last log lines:\n" + ("\n".join(parts) or "(no log)"))
