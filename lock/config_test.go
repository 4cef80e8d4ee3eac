package lock

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	require.Equal(t, "tally:lock:", c.Prefix)
	require.Equal(t, 8*time.Second, c.TTL)
	require.Equal(t, 5*time.Second, c.WaitTimeout)
	require.Equal(t, 500*time.Microsecond, c.RetryDelayMin)
	require.Equal(t, 1500*time.Microsecond, c.RetryDelayMax)
	require.Equal(t, 100*time.Millisecond, c.AttemptTimeout, "min(TTL/20, 100ms)")
	require.Equal(t, 2*time.Second, c.SafetyMargin, "TTL/4")
	require.Equal(t, 8*time.Second/3, c.ExtendEvery, "TTL/3")
	require.NotNil(t, c.Logger)
	require.NotNil(t, c.Clock)
	require.NoError(t, Config{}.Validate())

	t.Run("derived defaults follow TTL", func(t *testing.T) {
		c := Config{TTL: 400 * time.Millisecond}.withDefaults()
		require.Equal(t, 100*time.Millisecond, c.SafetyMargin)
		require.Equal(t, 20*time.Millisecond, c.AttemptTimeout)
		require.Equal(t, 400*time.Millisecond/3, c.ExtendEvery)
	})
	t.Run("RetryDelayMax defaults to at least RetryDelayMin", func(t *testing.T) {
		c := Config{RetryDelayMin: 200 * time.Millisecond}.withDefaults()
		require.Equal(t, 200*time.Millisecond, c.RetryDelayMax)
		require.NoError(t, Config{RetryDelayMin: 200 * time.Millisecond}.Validate())
	})
}

func TestConfigValidate(t *testing.T) {
	valid := []struct {
		name string
		cfg  Config
	}{
		{"zero", Config{}},
		{"short TTL", Config{TTL: 300 * time.Millisecond}},
		{"minimum TTL", Config{TTL: MinTTL}},
		{"explicit", Config{TTL: time.Second, WaitTimeout: time.Second, RetryDelayMin: time.Millisecond,
			RetryDelayMax: time.Millisecond, SafetyMargin: 200 * time.Millisecond, ExtendEvery: 500 * time.Millisecond}},
	}
	for _, tc := range valid {
		t.Run("accepts "+tc.name, func(t *testing.T) {
			require.NoError(t, tc.cfg.Validate())
		})
	}

	invalid := []struct {
		name  string
		cfg   Config
		field string // must be named in the error
	}{
		{"negative TTL", Config{TTL: -time.Second}, "TTL"},
		{"TTL below minimum", Config{TTL: time.Millisecond}, "TTL"},
		{"negative WaitTimeout", Config{WaitTimeout: -1}, "WaitTimeout"},
		{"negative RetryDelayMin", Config{RetryDelayMin: -1}, "RetryDelayMin"},
		{"negative RetryDelayMax", Config{RetryDelayMax: -1}, "RetryDelayMax"},
		{"RetryDelayMax below RetryDelayMin", Config{RetryDelayMin: 50 * time.Millisecond, RetryDelayMax: 10 * time.Millisecond}, "RetryDelayMax"},
		{"negative AttemptTimeout", Config{AttemptTimeout: -1}, "AttemptTimeout"},
		{"AttemptTimeout plus SafetyMargin reach TTL", Config{TTL: time.Second, SafetyMargin: 500 * time.Millisecond, AttemptTimeout: 500 * time.Millisecond}, "AttemptTimeout"},
		{"negative SafetyMargin", Config{SafetyMargin: -1}, "SafetyMargin"},
		{"SafetyMargin equal to TTL", Config{TTL: time.Second, SafetyMargin: time.Second}, "SafetyMargin"},
		{"SafetyMargin above validity", Config{TTL: time.Second, SafetyMargin: 995 * time.Millisecond, ExtendEvery: time.Millisecond}, "SafetyMargin"},
		{"negative ExtendEvery", Config{ExtendEvery: -1}, "ExtendEvery"},
		{"ExtendEvery equal to TTL", Config{TTL: time.Second, ExtendEvery: time.Second}, "ExtendEvery"},
		{"ExtendEvery plus SafetyMargin reach TTL", Config{TTL: time.Second, SafetyMargin: 500 * time.Millisecond, ExtendEvery: 500 * time.Millisecond}, "ExtendEvery"},
	}
	for _, tc := range invalid {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			require.Error(t, err)
			require.ErrorContains(t, err, tc.field)
			require.ErrorContains(t, err, "lock: config:")

			c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
			t.Cleanup(func() { _ = c.Close() })
			_, err = New([]redis.UniversalClient{c}, tc.cfg)
			require.Error(t, err, "New validates its Config")
		})
	}
}

func TestNewErrors(t *testing.T) {
	t.Run("no masters", func(t *testing.T) {
		_, err := New(nil, Config{})
		require.True(t, errors.Is(err, ErrNoMasters), "got %v", err)
	})
	t.Run("nil master", func(t *testing.T) {
		_, err := New([]redis.UniversalClient{nil}, Config{})
		require.ErrorContains(t, err, "master 0 is nil")
	})
	t.Run("quorum is a majority", func(t *testing.T) {
		for n, want := range map[int]int{1: 1, 2: 2, 3: 2, 4: 3, 5: 3} {
			masters := make([]redis.UniversalClient, n)
			for i := range masters {
				c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
				t.Cleanup(func() { _ = c.Close() })
				masters[i] = c
			}
			l, err := New(masters, Config{})
			require.NoError(t, err)
			require.Equal(t, want, l.Quorum(), "%d masters", n)
		}
	})
}
