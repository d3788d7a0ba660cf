package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	schedulerv1 "github.com/agentserver/agentserver/gen/agentserver/scheduler/v1"
	agentserverv1 "github.com/agentserver/agentserver/gen/agentserver/v1"
	"github.com/agentserver/agentserver/pkg/intern"
	"github.com/agentserver/agentserver/pkg/store"
)

// inflight is a run the scheduler assigned to (or adopted from) a worker.
type inflight struct {
	epoch    int64
	slotType string
	attempt  int32
	// since is when the scheduler assigned or adopted it.
	since time.Time
	// gpu is the UUID of the GPU the scheduler chose for it (gpu slots).
	gpu string
	// onThread: the claim said the run is on a thread (FinishParams.OnThread's hint).
	onThread bool
	// cancelSent records that a Cancel went out, so it is sent once.
	cancelSent bool
	// released records that its result arrived: its slot (and GPU) is free in the
	// scheduler's count while the result waits to be written (nextBatch's linger), and
	// the entry stays until handleResults has read it.
	released bool
}

// session is one worker's Connect stream.
type session struct {
	srv      *Server
	workerID string
	worker   *store.Worker
	out      chan *schedulerv1.ConnectResponse
	done     chan struct{}
	closeOne sync.Once

	mu    sync.Mutex
	slots map[string]int32
	// spare holds the slot types whose last claim for this worker found fewer runs than
	// the worker had free slots, or was skipped since another worker's had (the queue was
	// empty): the dispatcher claims for them again
	// when runs are announced, so a slot of such a type freed meanwhile needs no wake-up
	// (release). freeSlots clears it: the claims that follow count the slots it reports
	// as all there are.
	spare     map[string]bool
	gpus      []store.GPU
	runs      map[uuid.UUID]*inflight
	draining  bool
	heartbeat time.Time

	// Protocol extensions in use in this session (Register.features, answered in
	// Registered.features); fixed at registration.
	resultAcks, resultEvents bool
}

// Protocol extensions a scheduler uses when a worker names them in Register.features.
const (
	// FeatureResultAcks: the results of a batch are acknowledged by one ResultAcks.
	FeatureResultAcks = "result_acks"
	// FeatureResultEvents: a RunResult may carry its claim's events (RunResult.events).
	FeatureResultEvents = "result_events"
)

func (s *session) close() { s.closeOne.Do(func() { close(s.done) }) }

func (s *session) lastHeartbeat() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.heartbeat
}

// live reports whether the worker heartbeats: a session whose stream looks open but
// whose worker stopped heartbeating (paused, wedged) gets no lease renewed and no new work.
func (s *session) live() bool {
	return time.Since(s.lastHeartbeat()) < s.srv.cfg.LeaseTTL-s.srv.cfg.HeartbeatInterval
}

// freeSlots returns the free slots by type, of the types in only (every type when only
// is nil), by the scheduler's own count of what it assigned: the worker's reports lag
// behind assignments, so they are never trusted to grant more. The dispatcher claims for
// them next: a slot of those types freed from now on wakes it again (spare is cleared for
// them until claimed records the claim). The other types keep their spare mark: a
// dispatch woken for one slot type makes no claim for another, and a freed slot of a
// type whose last claim emptied the queue still needs no wake-up.
func (s *session) freeSlots(only map[string]bool) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return nil
	}
	used := make(map[string]int32)
	for _, r := range s.runs {
		if !r.released {
			used[r.slotType]++
		}
	}
	free := make(map[string]int)
	for t, total := range s.slots {
		if only != nil && !only[t] {
			continue
		}
		if n := total - used[t]; n > 0 {
			free[t] = int(n)
			s.spare[t] = false
		}
	}
	return free
}

// leasesSince lists the runs in flight that were assigned before t.
func (s *session) leasesSince(t time.Time) []store.Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Lease
	for id, r := range s.runs {
		if r.since.Before(t) {
			out = append(out, store.Lease{RunID: id, Epoch: r.epoch})
		}
	}
	return out
}

// release frees, in the scheduler's count, the slots of the claims whose results are among
// ms (the worker freed them before it sent the results), without waiting for the results
// to be written: nextBatch calls it before a batch lingers and as results arrive during
// the wait. handleResults then drops the entries (and frees the slots of the results not
// released). Both wake the dispatcher only when a freed slot may have runs waiting for
// it (wakes): a wake-up per result made the dispatcher claim in smaller, more frequent
// statements (docs/performance-history.md, twenty-first pass).
func (s *session) release(ms []*schedulerv1.ConnectRequest) {
	wake := false
	s.mu.Lock()
	for _, m := range ms {
		r := m.GetResult()
		if r == nil {
			continue
		}
		id, err := parseRunName(r.GetRun())
		if err != nil {
			continue // refused by handleResults
		}
		if in, ok := s.runs[id]; ok && in.epoch == r.GetEpoch() && !in.released {
			wake = wake || s.wakes(in)
			in.released = true
		}
	}
	s.mu.Unlock()
	if wake {
		s.srv.kick()
	}
}

// wakes reports whether freeing in's slot (s.mu held) needs the dispatcher woken: unless
// the last claim of its type for this worker emptied the queue (the dispatcher then claims
// again when runs are announced, back to back, or at the poll, and sees the slot free),
// the runs queued behind may be waiting for it. A GPU always does (a run may be waiting
// for its memory).
func (s *session) wakes(in *inflight) bool {
	return !in.released && (!s.spare[in.slotType] || in.gpu != "")
}

// claimed records the end of a claim of slotType that asked for free runs and found n (or
// a claim skipped because another session's emptied the queue in the same dispatch: 0).
func (s *session) claimed(slotType string, free, n int) {
	s.mu.Lock()
	s.spare[slotType] = n < free
	s.mu.Unlock()
}

func (s *session) holds(id uuid.UUID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.runs[id]
	return ok
}

func (s *session) send(m *schedulerv1.ConnectResponse) bool {
	select {
	case s.out <- m:
		return true
	case <-s.done:
		return false
	}
}

// freeGPUs returns the GPUs no in-flight run holds, most free memory first.
func (s *session) freeGPUs() []store.GPU {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := make(map[string]bool)
	for _, r := range s.runs {
		if r.gpu != "" && !r.released {
			held[r.gpu] = true
		}
	}
	var out []store.GPU
	for _, g := range s.gpus {
		if !held[g.UUID] {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].MemoryTotalBytes-out[i].MemoryUsedBytes > out[j].MemoryTotalBytes-out[j].MemoryUsedBytes
	})
	return out
}

func (s *session) hasGPUs() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gpus) > 0
}

// assign records a claim as in flight (on gpu, when set) and pushes it to the worker. If
// the stream is gone the run keeps its lease until it expires and is requeued: nothing is
// lost.
func (s *session) assign(c *store.Claim, gpu string) {
	s.mu.Lock()
	s.runs[c.Run.ID] = &inflight{epoch: c.Run.Epoch, slotType: c.Run.SlotType, attempt: c.Run.Attempt, since: time.Now(), gpu: gpu,
		onThread: c.Run.ThreadID != ""}
	s.mu.Unlock()
	a, err := assignmentOf(c)
	if err != nil {
		s.srv.log.Error("encoding assignment", "run", c.Run.ID, "err", err)
		return
	}
	a.GpuUuid = gpu
	s.send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_Assignment{Assignment: a}})
}

// cancel tells the worker to stop a run, once per claim in flight here. The worker answers
// with a result (refused by fencing when the lease moved on), which frees the slot. A
// claim of another epoch than the one in flight here (an older execution that outlived
// its lease while this worker was paused) is always told to stop: the worker stops only
// the execution of that epoch.
func (s *session) cancel(l store.Lease, reason string) {
	s.mu.Lock()
	if r, ok := s.runs[l.RunID]; ok && r.epoch == l.Epoch {
		if r.cancelSent {
			s.mu.Unlock()
			return
		}
		r.cancelSent = true
	}
	s.mu.Unlock()
	s.send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_Cancel{Cancel: &schedulerv1.Cancel{
		Run: runName(l.RunID), Epoch: l.Epoch, Reason: reason,
	}}})
}

func runName(id uuid.UUID) string { return "runs/" + id.String() }

func parseRunName(name string) (uuid.UUID, error) {
	id, ok := strings.CutPrefix(name, "runs/")
	if !ok {
		return uuid.Nil, fmt.Errorf("run name %q: must look like runs/{id}", name)
	}
	return uuid.Parse(id)
}

func assignmentOf(c *store.Claim) (*schedulerv1.Assignment, error) {
	state, err := structpb.NewStruct(c.State)
	if err != nil {
		return nil, fmt.Errorf("run state: %w", err)
	}
	config, err := structpb.NewStruct(c.Config)
	if err != nil {
		return nil, fmt.Errorf("assistant config: %w", err)
	}
	var resume *structpb.Value
	if c.Resume != nil {
		var v any
		if err := json.Unmarshal(c.Resume, &v); err != nil {
			return nil, fmt.Errorf("resume value: %w", err)
		}
		if resume, err = structpb.NewValue(v); err != nil {
			return nil, fmt.Errorf("resume value: %w", err)
		}
	}
	return &schedulerv1.Assignment{
		Resume:           resume,
		Run:              runName(c.Run.ID),
		Epoch:            c.Run.Epoch,
		Assistant:        "assistants/" + c.Run.AssistantID,
		AssistantVersion: c.Run.AssistantVersion,
		Flow:             c.Flow,
		Config:           config,
		State:            state,
		Attempt:          c.Run.Attempt,
		Timeout:          durationpb.New(c.Run.Timeout),
		SlotType:         c.Run.SlotType,
		Step:             c.Step,
	}, nil
}

func slotsOf(inv []*agentserverv1.SlotInventory) map[string]int32 {
	out := make(map[string]int32, len(inv))
	for _, s := range inv {
		out[s.GetType()] += s.GetTotal()
	}
	return out
}

func storeSlots(inv []*agentserverv1.SlotInventory) []store.SlotCount {
	out := make([]store.SlotCount, len(inv))
	for i, s := range inv {
		out[i] = store.SlotCount{Type: s.GetType(), Total: s.GetTotal(), Used: s.GetUsed()}
	}
	return out
}

func storeGPUs(gpus []*agentserverv1.Gpu) []store.GPU {
	out := make([]store.GPU, len(gpus))
	for i, g := range gpus {
		out[i] = store.GPU{Index: g.GetIndex(), UUID: g.GetUuid(), Model: g.GetModel(),
			MemoryTotalBytes: g.GetMemoryTotalBytes(), MemoryUsedBytes: g.GetMemoryUsedBytes(),
			UtilizationPercent: g.GetUtilizationPercent(), TemperatureCelsius: g.GetTemperatureCelsius()}
	}
	return out
}

// Connect serves one worker session.
func (s *Server) Connect(stream schedulerv1.SchedulerService_ConnectServer) error {
	if s.stopping.Load() {
		return status.Error(codes.Unavailable, "scheduler shutting down; connect to another")
	}
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "the first message of a session must be register")
	}
	if reg.GetWorkerId() == "" {
		return status.Error(codes.InvalidArgument, "register.worker_id: must not be empty")
	}
	slots := slotsOf(reg.GetSlots())
	if len(slots) == 0 {
		return status.Error(codes.InvalidArgument, "register.slots: a worker needs at least one slot")
	}

	leases := make([]store.Lease, 0, len(reg.GetRunning()))
	for _, l := range reg.GetRunning() {
		id, err := parseRunName(l.GetRun())
		if err != nil {
			return status.Error(codes.InvalidArgument, "register.running: "+err.Error())
		}
		leases = append(leases, store.Lease{RunID: id, Epoch: l.GetEpoch()})
	}
	valid, lost, err := s.store.ValidateLeases(ctx, reg.GetWorkerId(), leases)
	if err != nil {
		return status.Error(codes.Unavailable, "validating leases: "+err.Error())
	}

	sess := &session{
		srv:       s,
		workerID:  reg.GetWorkerId(),
		out:       make(chan *schedulerv1.ConnectResponse, 256),
		done:      make(chan struct{}),
		slots:     slots,
		runs:      make(map[uuid.UUID]*inflight),
		spare:     make(map[string]bool),
		gpus:      storeGPUs(reg.GetGpus()),
		draining:  reg.GetDraining(),
		heartbeat: time.Now(),
	}
	var features []string
	for _, f := range reg.GetFeatures() {
		switch {
		case f == FeatureResultAcks && !sess.resultAcks:
			sess.resultAcks = true
		case f == FeatureResultEvents && !sess.resultEvents:
			sess.resultEvents = true
		default:
			continue // unknown to this scheduler, or named twice
		}
		features = append(features, f)
	}
	for _, l := range leases {
		if st, ok := valid[l.RunID]; ok {
			sess.runs[l.RunID] = &inflight{epoch: l.Epoch, slotType: st, since: time.Now()}
		}
	}
	state := store.WorkerReady
	if sess.draining {
		state = store.WorkerDraining
	}
	sess.worker = &store.Worker{
		ID: reg.GetWorkerId(), Pool: reg.GetPool(), Hostname: reg.GetHostname(), Labels: reg.GetLabels(),
		Slots: storeSlots(reg.GetSlots()), GPUs: storeGPUs(reg.GetGpus()),
		MemoryTotalBytes: reg.GetMemoryTotalBytes(), MemoryFreeBytes: reg.GetMemoryFreeBytes(),
		State: state, SchedulerID: s.cfg.ID, ConnectTime: time.Now(),
	}
	if err := s.store.UpsertWorker(ctx, sess.worker); err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	if len(valid) > 0 {
		// Adopted runs must not wait for the next lease tick.
		adopted := make([]store.Lease, 0, len(valid))
		for _, l := range leases {
			if _, ok := valid[l.RunID]; ok {
				adopted = append(adopted, l)
			}
		}
		if _, err := s.store.RenewLeases(ctx, map[string][]store.Lease{sess.workerID: adopted}, s.cfg.LeaseTTL); err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
	}

	registered := &schedulerv1.Registered{SchedulerId: s.cfg.ID, HeartbeatInterval: durationpb.New(s.cfg.HeartbeatInterval), Features: features}
	for _, l := range lost {
		registered.Lost = append(registered.Lost, &schedulerv1.RunLease{Run: runName(l.RunID), Epoch: l.Epoch})
	}
	if err := stream.Send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_Registered{Registered: registered}}); err != nil {
		return err
	}

	s.mu.Lock()
	if old, ok := s.sessions[sess.workerID]; ok {
		old.close()
	}
	s.sessions[sess.workerID] = sess
	s.mu.Unlock()
	log := s.log.With("worker", sess.workerID)
	log.Info("worker connected", "slots", slots, "adopted", len(valid), "lost", len(lost))
	defer func() {
		sess.close()
		s.mu.Lock()
		if s.sessions[sess.workerID] == sess {
			delete(s.sessions, sess.workerID)
		}
		s.mu.Unlock()
		// Its runs keep their leases until they expire: the worker may reconnect (here
		// or to another scheduler) and carry on.
		if err := s.store.SetWorkerState(context.WithoutCancel(ctx), sess.workerID, s.cfg.ID, store.WorkerLost); err != nil {
			log.Error("marking worker lost", "err", err)
		}
		log.Info("worker disconnected")
	}()
	s.kick()

	sendErr := make(chan error, 1)
	go func() {
		for {
			select {
			case m := <-sess.out:
				if err := stream.Send(m); err != nil {
					sendErr <- err
					sess.close()
					return
				}
			case <-sess.done:
				return
			}
		}
	}()
	// One goroutine receives, another writes what arrived in batches: while one batch
	// commits the next accumulates, so a busy worker costs one transaction per batch
	// rather than per message.
	recvErr := make(chan error, 2)
	in := make(chan *schedulerv1.ConnectRequest, 2*maxMessageBatch)
	go func() {
		defer close(in)
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case in <- m:
			case <-sess.done:
				return
			}
		}
	}()
	go func() {
		// Events held back for their results (see heldEvents); written at the latest
		// EventHold after they arrived, and when the session ends.
		held := &heldEvents{}
		defer func() {
			if len(held.evs) == 0 {
				return
			}
			// The stream's context may be gone: these events are still the worker's.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if err := s.flushEvents(fctx, sess, held); err != nil {
				log.Warn("writing a closed session's held events", "events", len(held.evs), "err", err)
			}
		}()
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		lastBatch := 0
		for {
			var m *schedulerv1.ConnectRequest
			ok := true
			if len(held.evs) == 0 {
				m, ok = <-in
			} else {
				timer.Reset(time.Until(held.since.Add(s.cfg.EventHold)))
				select {
				case m, ok = <-in:
				case <-timer.C:
					if err := s.flushEvents(ctx, sess, held); err != nil {
						recvErr <- err
						sess.close()
						return
					}
					continue
				}
				timer.Stop()
			}
			if !ok {
				return
			}
			batch := nextBatch(in, m, s.cfg.ResultLinger, lastBatch, sess.release)
			lastBatch = len(batch)
			if err := s.handleBatch(ctx, sess, batch, held); err != nil {
				recvErr <- err
				sess.close()
				return
			}
		}
	}()
	select {
	case err := <-recvErr:
		return err
	case err := <-sendErr:
		return err
	case <-sess.done:
		return status.Error(codes.Unavailable, "session replaced or scheduler shutting down; reconnect")
	}
}

// maxMessageBatch bounds the messages of one session written in one go.
const maxMessageBatch = 512

// lingerBatch is the size below which a batch of results waits for more, lingerAfter the
// size of the previous batch from which it does, and lingerFill the size at which the
// wait ends (nextBatch).
const (
	lingerBatch = 16
	lingerAfter = 4
	lingerFill  = 64
)

// nextBatch returns first and the messages queued behind it on in. With a linger
// (SCHEDULER_RESULT_LINGER, 5 ms by default), when the previous batch held lingerAfter
// messages or more (results are coming faster than they are written) and this one holds
// fewer than lingerBatch, all results and events, it waits up to linger for more, until
// it holds lingerFill: a result statement then writes several times the runs (its fixed
// cost is most of what a small batch costs: 2 ms and 16 messages cut the sustained
// benchmark's CPU per run by 3–4 %, PostgreSQL's by 5–12 %; 5 ms and 64 PostgreSQL's by
// another 6–13 %), at the price of up to linger on the completion of those runs. A batch
// that holds lingerBatch at once does not wait (a burn-down's results come faster than
// they are written). Their slots do not wait: release frees them in the scheduler's
// count before the wait, and those of the results that arrive during it as they arrive.
// A lone result at low load never waits, and anything else (a checkpoint, whose step
// waits for its acknowledgement, a heartbeat) ends the wait at once.
func nextBatch(in <-chan *schedulerv1.ConnectRequest, first *schedulerv1.ConnectRequest, linger time.Duration, previous int, release func([]*schedulerv1.ConnectRequest)) []*schedulerv1.ConnectRequest {
	batch := []*schedulerv1.ConnectRequest{first}
	lingers := linger > 0 && previous >= lingerAfter && resultOrEvent(first)
fill:
	for len(batch) < maxMessageBatch {
		select {
		case m, ok := <-in:
			if !ok {
				return batch
			}
			batch = append(batch, m)
			lingers = lingers && resultOrEvent(m)
		default:
			break fill
		}
	}
	if !lingers || len(batch) >= lingerBatch {
		return batch
	}
	release(batch)
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(batch) < lingerFill {
		select {
		case m, ok := <-in:
			if !ok {
				return batch
			}
			batch = append(batch, m)
			if !resultOrEvent(m) {
				return batch
			}
			release(batch[len(batch)-1:])
		case <-t.C:
			return batch
		}
	}
	return batch
}

func resultOrEvent(m *schedulerv1.ConnectRequest) bool {
	return m.GetResult() != nil || m.GetEvent() != nil
}

// heldEvents are a session's events kept back for their results (Config.EventHold), in
// arrival order. Nearly every run sends its step_started event a moment before its
// result; written on their own, the events of a busy worker cost a statement per batch
// (an eighth of the statements per run under sustained load), and held, they go into the
// statement that writes the result. A run that lasts longer has its events written
// EventHold after they arrived.
type heldEvents struct {
	evs []store.EventParams
	// since is when the oldest of evs arrived.
	since time.Time
}

// flushEvents writes the held events and forgets them.
func (s *Server) flushEvents(ctx context.Context, sess *session, held *heldEvents) error {
	evs := held.evs
	held.evs = nil
	refused, err := s.store.AppendRunEvents(ctx, evs)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	for _, l := range refused {
		if err := s.fenced(sess, l.RunID, l.Epoch, store.ErrStaleEpoch); err != nil {
			return err
		}
	}
	return nil
}

// handleBatch processes messages of a worker in arrival order per run: its events first
// (one statement), then checkpoints, then results (one transaction), then the newest
// heartbeat. A run's events and checkpoints always precede its result in the stream, so
// this order keeps each run's writes in order. Events of a claim whose result is in the
// same batch are written with the result, under its fence, instead of on their own; the
// others are held (with those held before) until their result comes, for up to EventHold,
// and written before anything else of the batch when it has a checkpoint.
func (s *Server) handleBatch(ctx context.Context, sess *session, batch []*schedulerv1.ConnectRequest, held *heldEvents) error {
	var results []*schedulerv1.RunResult
	var rest []*schedulerv1.ConnectRequest
	var heartbeat *schedulerv1.ConnectRequest
	// The claims whose result is in this batch. A result whose run name does not parse
	// is refused by handleResults.
	finishing := make(map[store.Lease]bool)
	for _, m := range batch {
		if r := m.GetResult(); r != nil {
			if id, err := parseRunName(r.GetRun()); err == nil {
				finishing[store.Lease{RunID: id, Epoch: r.GetEpoch()}] = true
			}
		}
	}
	var withResult map[store.Lease][]store.Event
	// Events held from earlier batches come first: they arrived first.
	events := held.evs[:0:0]
	hold := func(e store.EventParams) {
		l := store.Lease{RunID: e.RunID, Epoch: e.Epoch}
		if !finishing[l] {
			events = append(events, e)
			return
		}
		if withResult == nil {
			withResult = make(map[store.Lease][]store.Event)
		}
		withResult[l] = append(withResult[l], store.Event{Type: e.Type, Data: e.Data})
	}
	for _, e := range held.evs {
		hold(e)
	}
	since := held.since
	if len(events) == 0 {
		since = time.Now()
	}
	var eventsTaken map[store.Lease]bool
	for _, m := range batch {
		switch msg := m.GetMsg().(type) {
		case *schedulerv1.ConnectRequest_Event:
			id, err := parseRunName(msg.Event.GetRun())
			if err != nil {
				return status.Error(codes.InvalidArgument, err.Error())
			}
			hold(store.EventParams{RunID: id, Epoch: msg.Event.GetEpoch(), Type: msg.Event.GetType(), Data: eventData(msg.Event)})
		case *schedulerv1.ConnectRequest_Result:
			// Its events happened before it: they go with it (finishing has its claim).
			// A result sent twice (resent after a reconnect while still queued) carries
			// its events once.
			evs, err := resultEvents(msg.Result)
			if err != nil {
				return err
			}
			if len(evs) > 0 {
				l := store.Lease{RunID: evs[0].RunID, Epoch: evs[0].Epoch}
				if !eventsTaken[l] {
					if eventsTaken == nil {
						eventsTaken = make(map[store.Lease]bool)
					}
					eventsTaken[l] = true
					for _, e := range evs {
						hold(e)
					}
				}
			}
			results = append(results, msg.Result)
		case *schedulerv1.ConnectRequest_Heartbeat:
			heartbeat = m
		default:
			rest = append(rest, m)
		}
	}
	held.evs, held.since = events, since
	if len(held.evs) > 0 && (len(rest) > 0 || len(held.evs) >= maxMessageBatch || time.Since(since) >= s.cfg.EventHold) {
		if err := s.flushEvents(ctx, sess, held); err != nil {
			return err
		}
	}
	for _, m := range rest {
		if err := s.handle(ctx, sess, m); err != nil {
			return err
		}
	}
	if len(results) > 0 {
		if err := s.handleResults(ctx, sess, results, withResult); err != nil {
			return err
		}
	}
	if heartbeat != nil {
		return s.handle(ctx, sess, heartbeat)
	}
	return nil
}

// handle processes one message of a worker that handleBatch does not gather (a heartbeat,
// a checkpoint; results and events only ever go through handleBatch). Store errors other
// than fencing end the session (the worker reconnects and resends); a fenced write tells
// the worker to stop.
func (s *Server) handle(ctx context.Context, sess *session, m *schedulerv1.ConnectRequest) error {
	switch msg := m.GetMsg().(type) {
	case *schedulerv1.ConnectRequest_Heartbeat:
		hb := msg.Heartbeat
		sess.mu.Lock()
		sess.heartbeat = time.Now()
		wasDraining := sess.draining
		sess.draining = hb.GetDraining()
		if len(hb.GetGpus()) > 0 {
			sess.gpus = storeGPUs(hb.GetGpus())
		}
		w := *sess.worker
		sess.mu.Unlock()
		w.MemoryFreeBytes = hb.GetMemoryFreeBytes()
		if len(hb.GetSlots()) > 0 {
			w.Slots = storeSlots(hb.GetSlots())
		}
		if len(hb.GetGpus()) > 0 {
			w.GPUs = storeGPUs(hb.GetGpus())
		}
		w.State = store.WorkerReady
		if hb.GetDraining() {
			w.State = store.WorkerDraining
		}
		if err := s.store.UpsertWorker(ctx, &w); err != nil {
			return status.Error(codes.Unavailable, err.Error())
		}
		if wasDraining && !hb.GetDraining() {
			s.kick()
		}
	case *schedulerv1.ConnectRequest_Checkpoint:
		cp := msg.Checkpoint
		id, err := parseRunName(cp.GetRun())
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		err = s.store.Checkpoint(ctx, id, cp.GetEpoch(), cp.GetNextStep(), cp.GetState().AsMap())
		if err == nil {
			// Durable: the worker may start the next step.
			sess.send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_CheckpointAck{CheckpointAck: &schedulerv1.CheckpointAck{
				Run: cp.GetRun(), Epoch: cp.GetEpoch(), NextStep: cp.GetNextStep(),
			}}})
		}
		return s.fenced(sess, id, cp.GetEpoch(), err)
	case *schedulerv1.ConnectRequest_Register:
		return status.Error(codes.InvalidArgument, "register may only be the first message of a session")
	}
	return nil
}

// fenced turns a refused write into a Cancel for the worker; other errors end the session.
func (s *Server) fenced(sess *session, id uuid.UUID, epoch int64, err error) error {
	if errors.Is(err, store.ErrStaleEpoch) {
		s.log.Warn("refused write from a worker whose lease moved on", "worker", sess.workerID, "run", id, "epoch", epoch)
		sess.cancel(store.Lease{RunID: id, Epoch: epoch}, "lease_lost")
		return nil
	}
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	return nil
}

var outcomes = map[schedulerv1.RunResult_Outcome]store.Outcome{
	schedulerv1.RunResult_OUTCOME_SUCCEEDED:   store.OutcomeSucceeded,
	schedulerv1.RunResult_OUTCOME_FAILED:      store.OutcomeFailed,
	schedulerv1.RunResult_OUTCOME_CANCELLED:   store.OutcomeCancelled,
	schedulerv1.RunResult_OUTCOME_TIMED_OUT:   store.OutcomeTimedOut,
	schedulerv1.RunResult_OUTCOME_RELEASED:    store.OutcomeReleased,
	schedulerv1.RunResult_OUTCOME_INTERRUPTED: store.OutcomeInterrupted,
}

// handleResults records results; events[lease] are the events that came with a result
// (written before it, once).
func (s *Server) handleResults(ctx context.Context, sess *session, rs []*schedulerv1.RunResult, events map[store.Lease][]store.Event) error {
	params := make([]store.FinishParams, len(rs))
	for i, r := range rs {
		id, err := parseRunName(r.GetRun())
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		outcome, ok := outcomes[r.GetOutcome()]
		if !ok {
			return status.Errorf(codes.InvalidArgument, "result.outcome: %s is not a valid outcome", r.GetOutcome())
		}
		sess.mu.Lock()
		attempt, onThread := int32(1), false
		if in, ok := sess.runs[id]; ok {
			if in.attempt > 0 {
				attempt = in.attempt
			}
			onThread = in.onThread
		}
		sess.mu.Unlock()
		var state map[string]any
		if r.GetState() != nil {
			state = r.GetState().AsMap()
		}
		l := store.Lease{RunID: id, Epoch: r.GetEpoch()}
		params[i] = store.FinishParams{
			RunID: id, Epoch: r.GetEpoch(), Outcome: outcome, State: state, Error: r.GetError(),
			Retryable: r.GetRetryable(), RetryDelay: s.retryDelay(attempt),
			Step: r.GetStep(), Prompt: r.GetPrompt().AsInterface(), Events: events[l], OnThread: onThread,
		}
		delete(events, l) // a result resent twice in one batch carries them once
	}
	// The worker freed each slot before it sent the result, so the slots are free now,
	// before the results commit: the dispatcher claims the next runs while this batch
	// commits (claims and completions overlap instead of taking turns). A run whose
	// result does not commit keeps its lease: the worker resends the result after it
	// reconnects, or the lease expires and the run is recovered.
	wake := false
	sess.mu.Lock()
	for _, p := range params {
		if in, ok := sess.runs[p.RunID]; ok && in.epoch == p.Epoch {
			wake = wake || sess.wakes(in)
			delete(sess.runs, p.RunID)
		}
	}
	sess.mu.Unlock()
	if wake {
		s.kick()
	}
	_, errs, err := s.store.FinishRuns(ctx, params)
	if err != nil {
		// Nothing acknowledged: the worker resends after it reconnects; results that were
		// written all the same are then refused as stale and acknowledged.
		return status.Error(codes.Unavailable, err.Error())
	}
	for i, p := range params {
		if errors.Is(errs[i], store.ErrStaleEpoch) {
			s.log.Warn("refused result from a worker whose lease moved on", "worker", sess.workerID, "run", p.RunID, "epoch", p.Epoch)
		}
	}
	if sess.resultAcks {
		acks := &schedulerv1.ResultAcks{Acks: make([]*schedulerv1.ResultAck, len(rs))}
		for i, r := range rs {
			acks.Acks[i] = &schedulerv1.ResultAck{Run: r.GetRun(), Epoch: r.GetEpoch()}
		}
		sess.send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAcks{ResultAcks: acks}})
		return nil
	}
	for _, r := range rs {
		sess.send(&schedulerv1.ConnectResponse{Msg: &schedulerv1.ConnectResponse_ResultAck{ResultAck: &schedulerv1.ResultAck{
			Run: r.GetRun(), Epoch: r.GetEpoch(),
		}}})
	}
	return nil
}

// resultEvents are the events a result carries (RunResult.events), as the result's claim's.
// It accepts them whether or not the session agreed to FeatureResultEvents: they are
// the worker's, and writing them loses nothing.
func resultEvents(r *schedulerv1.RunResult) ([]store.EventParams, error) {
	if len(r.GetEvents()) == 0 {
		return nil, nil
	}
	id, err := parseRunName(r.GetRun())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out := make([]store.EventParams, len(r.GetEvents()))
	for i, e := range r.GetEvents() {
		if (e.GetRun() != "" && e.GetRun() != r.GetRun()) || (e.GetEpoch() != 0 && e.GetEpoch() != r.GetEpoch()) {
			return nil, status.Errorf(codes.InvalidArgument, "result.events[%d]: run %q epoch %d is not the result's claim (%s epoch %d): leave them empty or the same",
				i, e.GetRun(), e.GetEpoch(), r.GetRun(), r.GetEpoch())
		}
		out[i] = store.EventParams{RunID: id, Epoch: r.GetEpoch(), Type: e.GetType(), Data: eventData(e)}
	}
	return out, nil
}

// eventData is e's data as a map. A step_started event's {"step": name}, which nearly
// every run sends, is one shared map per step name (stepStartedData): event data is only
// read from here on (written to run_events, or kept on the run).
func eventData(e *schedulerv1.RunEvent) map[string]any {
	if f := e.GetData().GetFields(); e.GetType() == "step_started" && len(f) == 1 {
		if v, ok := f["step"].GetKind().(*structpb.Value_StringValue); ok {
			return stepStartedData.Get(v.StringValue, newStepStartedData)
		}
	}
	return e.GetData().AsMap()
}

// stepStartedData holds the data of step_started events, {"step": name}, by step name.
var stepStartedData intern.Cache[map[string]any]

func newStepStartedData(step string) map[string]any { return map[string]any{"step": step} }
