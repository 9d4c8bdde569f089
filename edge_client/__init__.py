"""fedge's device agent: trains only when the device is charging and idle,
survives restarts and bad networks, never sends raw data.

Modules, by role::

    agent.py          the Agent: one check-in → download → train → upload cycle, run forever
    lifecycle.py      AgentState enum and the legal transitions
    eligibility/      device-state providers (sysfs, /proc, thermal, network, Termux,
                      command, simulated) and the policy (eligible, reasons)
    protocol.py       docs/protocol.md, device side: requests, answer parsing, error mapping
    transport.py      HttpTransport (aiohttp) implementing fedge.transport.Transport
    cache.py          model cache: graphs by sha256, weights per version, Range resume, deltas
    codec.py          the only door to quantization
    trainer.py        Trainer interface: ProcessTrainer (child process), InProcessTrainer
    session.py        what runs where training runs (imported by the worker)
    worker.py         ``python -m edge_client.worker``
    data.py           local data: .npz, CSV, module:function
    storage.py        atomic state files, identity, residual, the upload queue
    paths.py          safe names (model, sha256) and paths kept inside the state directory
    retry.py          exponential backoff with full jitter, RetryInvoker
    config.py         AgentConfig (YAML → frozen dataclasses)
    cli.py            ``fedge agent init|run|status|install-service``
    service_unit.py   the systemd unit
    testing.py        seams: RecordingTransport, FaultyTransport, drive(ManualClock)

Exceptions (``edge_client.errors``)::

    fedge.errors.FedgeError
    └── AgentError
        ├── ConfigError (ValueError)      bad YAML or CLI flag; names the key
        ├── NotEnrolledError              no identity: run `fedge agent init`
        ├── EnrollmentError               the server refused the enrollment token
        ├── IllegalTransition             a lifecycle bug
        ├── StateWriteError (OSError)     disk full, read-only, permissions
        ├── StateReadError                a corrupt state file (set aside)
        ├── EligibilityError              a provider failed (bad JSON, timeout, missing)
        ├── UnsafeNameError (ValueError)  a name that would lead outside the state directory
        ├── DataError (ValueError)        local data missing or not fitting the model
        ├── ServerError                   an HTTP answer the agent cannot use
        │                                 (.status, .code, .retryable, .retry_after)
        ├── DownloadError
        │   └── IntegrityError            sha256 mismatch: discarded, fetched again
        └── TrainingError
            └── RuntimeCrash              the training worker died (.signal)

``fedge.transport.TransportError`` (no complete answer) is retried like a 5xx.
aiohttp's, NumPy's and quantization's exceptions never escape this package.
See docs/agent.md.
"""
