package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/redis/go-redis/v9"
)

// maxPipeline is the most commands one pipeline to a master carries.
const maxPipeline = 256

// errClosed is what lease commands report after Close.
var errClosed = errors.New("lock: locker closed")

// pipelinePool is the redsync connection pool of one master. Its connections do not send
// their commands one by one: each command is handed to the pool's single writer
// goroutine, which sends every command queued at that moment (up to maxPipeline) as one
// go-redis pipeline — one write and one read on one connection for many SET NX and
// scripts — and hands each caller its own result.
//
// Nothing waits for a batch to fill: a command queued while the writer is idle is sent at
// once. Batches form by themselves while a pipeline is in flight ("smart batching"), so
// they grow with the load and a lone command pays no extra latency.
//
// A caller whose context ends stops waiting; its command may still run if it was already
// sent (as with a plain go-redis call), and is skipped if it was not.
type pipelinePool struct {
	client redis.UniversalClient
	calls  chan *call

	ctx  context.Context // cancelled by close; bounds every pipeline
	stop context.CancelFunc
	done chan struct{} // closed when the writer has returned

	pipelines atomic.Int64 // pipelines sent, for tests
}

// call is one command on its way through the writer.
type call struct {
	ctx context.Context
	cmd redis.Cmder // holds the result once done is closed

	// For scripts: the writer sends EVALSHA when the master is known to have the script
	// and EVAL (which also caches it) otherwise, and replaces cmd accordingly.
	script *redsyncredis.Script
	keys   []string
	args   []any

	done chan struct{} // closed by the writer when cmd holds its result
}

// newPipelinePool starts the writer for client; close stops it.
func newPipelinePool(client redis.UniversalClient) *pipelinePool {
	ctx, stop := context.WithCancel(context.Background())
	p := &pipelinePool{
		client: client,
		calls:  make(chan *call, maxPipeline),
		ctx:    ctx,
		stop:   stop,
		done:   make(chan struct{}),
	}
	go p.run()
	return p
}

// close stops the writer and waits for it: a pipeline in flight ends at the latest at its
// callers' deadlines. Callers still waiting get errClosed. Calling close again is a no-op.
func (p *pipelinePool) close() {
	p.stop()
	<-p.done
}

// Get implements redsyncredis.Pool. ctx bounds the commands of the returned Conn.
func (p *pipelinePool) Get(ctx context.Context) (redsyncredis.Conn, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	if p.ctx.Err() != nil {
		return nil, errClosed
	}
	return &pipelineConn{p: p, ctx: ctx}, nil
}

// do hands c to the writer and waits for its result, for the caller's context to end or
// for the pool to close; only in the first case does c.cmd hold the result.
func (p *pipelinePool) do(c *call) error {
	c.done = make(chan struct{})
	select {
	case p.calls <- c:
	case <-c.ctx.Done():
		return c.ctx.Err()
	case <-p.ctx.Done():
		return errClosed
	}
	select {
	case <-c.done:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	case <-p.ctx.Done():
		return errClosed
	}
}

// run is the writer: it takes the first queued command, adds every other command queued by
// then, sends them as one pipeline and starts over.
func (p *pipelinePool) run() {
	defer close(p.done)
	loaded := make(map[string]bool) // hashes of the scripts the master is known to cache
	batch := make([]*call, 0, maxPipeline)
	for {
		select {
		case <-p.ctx.Done():
			return
		case c := <-p.calls:
			batch = append(batch, c)
		}
	fill:
		for len(batch) < maxPipeline {
			select {
			case c := <-p.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		p.send(batch, loaded)
		clear(batch)
		batch = batch[:0]
	}
}

// send sends the batch's commands whose callers still wait as one pipeline, bounded by the
// latest of their deadlines, and completes every call. Scripts the master answered with
// NOSCRIPT (it restarted or flushed its script cache) are sent again at once with EVAL.
func (p *pipelinePool) send(batch []*call, loaded map[string]bool) {
	pipe := p.client.Pipeline()
	live := make([]*call, 0, len(batch))
	var (
		deadline time.Time
		bounded  = true
	)
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			// The caller gave up before its command was sent: do not send it.
			c.cmd.SetErr(err)
			close(c.done)
			continue
		}
		if c.script != nil && !loaded[c.script.Hash] {
			c.cmd = scriptCmd(c.ctx, c.script, false, c.keys, c.args)
		}
		if d, ok := c.ctx.Deadline(); !ok {
			bounded = false
		} else if d.After(deadline) {
			deadline = d
		}
		_ = pipe.Process(c.ctx, c.cmd) // only queues
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx := p.ctx
	if bounded {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	// Exec reports the first command error; every command carries its own.
	_, _ = pipe.Exec(ctx)
	p.pipelines.Add(1)

	var again []*call
	for _, c := range live {
		err := c.cmd.Err()
		if c.script != nil {
			switch {
			case err == nil:
				loaded[c.script.Hash] = true
			case redis.HasErrorPrefix(err, "NOSCRIPT"):
				delete(loaded, c.script.Hash)
				again = append(again, c)
				continue
			}
		}
		var redisErr redis.Error
		if err != nil && err != redis.Nil && !errors.As(err, &redisErr) {
			// Connection trouble: the master may come back empty, without our scripts.
			clear(loaded)
		}
		close(c.done)
	}
	if len(again) > 0 {
		p.send(again, loaded) // EVAL now, which never answers NOSCRIPT
	}
}

// scriptCmd returns the EVALSHA (sha) or EVAL command running script.
func scriptCmd(ctx context.Context, script *redsyncredis.Script, sha bool, keys []string, args []any) *redis.Cmd {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	if sha {
		cmdArgs = append(cmdArgs, "evalsha", script.Hash)
	} else {
		cmdArgs = append(cmdArgs, "eval", script.Src)
	}
	cmdArgs = append(cmdArgs, len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmdArgs = append(cmdArgs, args...)
	return redis.NewCmd(ctx, cmdArgs...)
}

// pipelineConn implements redsyncredis.Conn over a pipelinePool; every command is bounded
// by the context the connection was obtained with.
type pipelineConn struct {
	p   *pipelinePool
	ctx context.Context
}

func (c *pipelineConn) do(cmd redis.Cmder) error {
	return c.p.do(&call{ctx: c.ctx, cmd: cmd})
}

func (c *pipelineConn) Get(name string) (string, error) {
	cmd := redis.NewStringCmd(c.ctx, "get", name)
	if err := c.do(cmd); err != nil {
		return "", err
	}
	v, err := cmd.Result()
	return v, noErrNil(err)
}

func (c *pipelineConn) Set(name string, value string) (bool, error) {
	cmd := redis.NewStatusCmd(c.ctx, "set", name, value)
	if err := c.do(cmd); err != nil {
		return false, err
	}
	reply, err := cmd.Result()
	return reply == "OK", err
}

func (c *pipelineConn) SetNX(name string, value string, expiry time.Duration) (bool, error) {
	cmd := redis.NewBoolCmd(c.ctx, "set", name, value, "px", max(1, expiry.Milliseconds()), "nx")
	if err := c.do(cmd); err != nil {
		return false, err
	}
	return cmd.Result()
}

func (c *pipelineConn) PTTL(name string) (time.Duration, error) {
	cmd := redis.NewDurationCmd(c.ctx, time.Millisecond, "pttl", name)
	if err := c.do(cmd); err != nil {
		return 0, err
	}
	return cmd.Result()
}

func (c *pipelineConn) Eval(script *redsyncredis.Script, keysAndArgs ...any) (any, error) {
	if len(keysAndArgs) < script.KeyCount {
		return nil, fmt.Errorf("lock: script needs %d keys, got %d arguments", script.KeyCount, len(keysAndArgs))
	}
	keys := make([]string, script.KeyCount)
	for i := range keys {
		k, ok := keysAndArgs[i].(string)
		if !ok {
			return nil, fmt.Errorf("lock: script key %d is a %T, not a string", i, keysAndArgs[i])
		}
		keys[i] = k
	}
	args := keysAndArgs[script.KeyCount:]
	cl := &call{ctx: c.ctx, cmd: scriptCmd(c.ctx, script, true, keys, args), script: script, keys: keys, args: args}
	if err := c.p.do(cl); err != nil {
		return nil, err
	}
	v, err := cl.cmd.(*redis.Cmd).Result()
	return v, noErrNil(err)
}

func (c *pipelineConn) ScriptLoad(script *redsyncredis.Script) error {
	cmd := redis.NewStringCmd(c.ctx, "script", "load", script.Src)
	if err := c.do(cmd); err != nil {
		return err
	}
	hash, err := cmd.Result()
	if err == nil {
		script.Hash = hash
	}
	return err
}

// Close implements redsyncredis.Conn; the pool's connection stays open.
func (c *pipelineConn) Close() error { return nil }

func noErrNil(err error) error {
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// pools returns the masters' pools as redsync pools.
func redsyncPools(ps []*pipelinePool) []redsyncredis.Pool {
	out := make([]redsyncredis.Pool, len(ps))
	for i, p := range ps {
		out[i] = p
	}
	return out
}

// closePools stops the writers of ps concurrently and waits for all of them.
func closePools(ps []*pipelinePool) {
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Go(p.close)
	}
	wg.Wait()
}
