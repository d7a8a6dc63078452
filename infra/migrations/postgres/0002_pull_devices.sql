-- Pull devices: some terminals (e.g. MA300) speak the protocol only over UDP.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS transport text NOT NULL DEFAULT 'tcp'
    CHECK (transport IN ('tcp', 'udp'));
