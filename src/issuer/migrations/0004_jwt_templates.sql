-- Schema version 4: the M2M claims template, managed at run time (the
-- management API's jwt_templates/M2M and `issuer template set`).
-- Empty until the first open that knows of it: Store::ensure_template then
-- copies the configuration's template in, so a database made before this
-- version keeps issuing exactly the tokens it issued.

CREATE TABLE jwt_templates (
    template_type TEXT PRIMARY KEY CHECK (template_type IN ('M2M')),
    -- Source text, as set; parsed and render-checked before it is stored.
    template_content TEXT NOT NULL,
    -- '' means none: tokens carry aud = [project_id] only.
    custom_audience TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL
);
