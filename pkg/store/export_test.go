package store

// CancelRequestsStatement is CancelRequests' statement, for tests of its cost.
const CancelRequestsStatement = cancelRequests

// RecoverStatement is RecoverRuns' statement, for tests of its cost.
var RecoverStatement = recoverStatement

// ReconcileLoadStatement is ReconcileLoad's count, for tests of its cost.
const ReconcileLoadStatement = reconcileLoad
