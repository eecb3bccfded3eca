-- Schema version 3: client names need not be unique, as on Stytch (only
-- client_id is). The name stays indexed for search by client_name.
DROP INDEX IF EXISTS m2m_clients_name_unique;

CREATE INDEX IF NOT EXISTS m2m_clients_name ON m2m_clients (client_name) WHERE client_name <> '';
