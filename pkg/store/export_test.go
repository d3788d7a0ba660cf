package store

// CancelRequestsStatement is CancelRequests' statement, for tests of its cost.
const CancelRequestsStatement = cancelRequests
