-- The statements SQLModel.metadata.create_all ran on sqlite for watcher/store/models.py
-- at commit e47bb9a (schema 0002), before watcher had migrations.

CREATE TABLE image (
	id INTEGER NOT NULL, 
	reference VARCHAR(400) NOT NULL, 
	registry_name VARCHAR(255) NOT NULL, 
	repository VARCHAR(255) NOT NULL, 
	tag VARCHAR(128) NOT NULL, 
	platform VARCHAR(64), 
	source_digest VARCHAR(160), 
	created_at DATETIME NOT NULL, 
	last_check_at DATETIME, 
	last_outcome VARCHAR(16), 
	last_error_reason VARCHAR(32), 
	last_error VARCHAR(2000), 
	last_change_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (reference)
);

CREATE TABLE manifest (
	digest VARCHAR(160) NOT NULL, 
	media_type VARCHAR(255) NOT NULL, 
	body BLOB NOT NULL, 
	fetched_at DATETIME NOT NULL, 
	PRIMARY KEY (digest)
);

CREATE TABLE digest_period (
	id INTEGER NOT NULL, 
	image_id INTEGER NOT NULL, 
	digest VARCHAR(160) NOT NULL, 
	media_type VARCHAR(255) NOT NULL, 
	first_seen DATETIME NOT NULL, 
	last_seen DATETIME NOT NULL, 
	ended_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(image_id) REFERENCES image (id)
);

CREATE INDEX ix_digest_period_image_id ON digest_period (image_id);

CREATE UNIQUE INDEX one_open_period_per_image ON digest_period (image_id) WHERE ended_at IS NULL;

CREATE TABLE notification (
	id INTEGER NOT NULL, 
	period_id INTEGER NOT NULL, 
	target VARCHAR(64) NOT NULL, 
	title VARCHAR(500) NOT NULL, 
	body VARCHAR(8000) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	created_at DATETIME NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	claimed_until DATETIME, 
	delivered_at DATETIME, 
	last_error VARCHAR(2000), 
	PRIMARY KEY (id), 
	CONSTRAINT one_per_target UNIQUE (period_id, target), 
	FOREIGN KEY(period_id) REFERENCES digest_period (id)
);

CREATE INDEX ix_notification_period_id ON notification (period_id);

CREATE INDEX ix_notification_status ON notification (status);

CREATE TABLE platform_digest (
	id INTEGER NOT NULL, 
	period_id INTEGER NOT NULL, 
	platform VARCHAR(64) NOT NULL, 
	digest VARCHAR(160) NOT NULL, 
	media_type VARCHAR(255) NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT one_per_platform UNIQUE (period_id, platform), 
	FOREIGN KEY(period_id) REFERENCES digest_period (id)
);

CREATE INDEX ix_platform_digest_period_id ON platform_digest (period_id);
